//! Human durations in config: `"500ms"`, `"30s"`, `"10m"`, `"1h"`; `"0s"` where a key allows
//! "off". Serialized back in the largest unit that keeps them exact.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serializer};

pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (use e.g. \"500ms\", \"30s\", \"10m\", \"1h\")"))?;
    let per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("`{text}` has no unit (use ms, s, m or h)")),
    };
    let ms = n.checked_mul(per_unit).ok_or_else(|| format!("`{text}` is too long a duration"))?;
    Ok(Duration::from_millis(ms))
}

pub fn format(d: &Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(d))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["500ms", "30s", "10m", "1h", "0s", "90s"] {
            assert_eq!(format(&parse(s).unwrap()), s);
        }
        assert!(parse("30").is_err());
        assert!(parse("s").is_err());
        assert!(parse("3d").is_err());
    }

    #[test]
    fn refuses_what_does_not_fit_in_milliseconds() {
        assert_eq!(parse("18446744073709551615ms").unwrap().as_millis(), u128::from(u64::MAX));
        assert!(parse("5124095576030432h").unwrap_err().contains("too long"));
        assert!(parse("2049638230412172396m").is_err());
        assert!(parse("18446744073709552s").is_err());
    }
}
