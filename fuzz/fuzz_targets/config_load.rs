//! Configuration loading from TOML text: any text gives a validated configuration or a clean
//! error, never a panic; a configuration that loads prints (secrets masked) and loads again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_edge::config::{load, Overrides, Source};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = load(&Source::Text(text.to_owned()), &Overrides::default()) else { return };
    // What `mcp-edge check` prints.
    let printed = config.to_toml();
    assert!(!printed.starts_with("# cannot render"), "{printed}");
    // Secrets print as `***`; the rest reads back as the same configuration.
    if !printed.contains("***") {
        let again = load(&Source::Text(printed.clone()), &Overrides::default())
            .unwrap_or_else(|e| panic!("the printed configuration does not load: {e}\n{printed}"));
        assert!(again == config, "the printed configuration loads differently:\n{printed}");
    }
});
