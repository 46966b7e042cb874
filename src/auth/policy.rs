//! Allow-lists (`routes[].allow`): which tools, resources and prompts a principal may use.
//!
//! A session's [`Grants`] are worked out once, when it starts. A request for something not
//! granted (`tools/call`, `resources/read`, `resources/subscribe`, `prompts/get`) is answered
//! with a JSON-RPC error and never reaches the backend; list results (`tools/list`,
//! `resources/list`, `resources/templates/list`, `prompts/list`) leave out what the caller
//! cannot use.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::Caller;
use crate::config::AllowRule;
use crate::jsonrpc::Message;

#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<AllowRule>,
}

/// What one caller may use: name patterns (`*` alone is everything, `x*` a prefix).
#[derive(Debug, Default, PartialEq)]
pub struct Grants {
    tools: Vec<String>,
    resources: Vec<String>,
    prompts: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Resource,
    Prompt,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Resource => "resource",
            Kind::Prompt => "prompt",
        }
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl Policy {
    pub fn new(rules: &[AllowRule]) -> Policy {
        Policy { rules: rules.to_vec() }
    }

    pub fn rules(&self) -> &[AllowRule] {
        &self.rules
    }

    /// The grants of `caller`; `None` when the route restricts nothing.
    pub fn grants(&self, caller: &Caller) -> Option<Arc<Grants>> {
        if self.rules.is_empty() {
            return None;
        }
        let name = caller.name().map(|n| &**n);
        let mut g = Grants::default();
        for rule in &self.rules {
            let by_name = name.is_some_and(|n| rule.principals.iter().any(|p| p == n));
            let by_scope = caller.scopes().iter().any(|s| rule.scopes.contains(s));
            if by_name || by_scope {
                g.tools.extend(rule.tools.iter().cloned());
                g.resources.extend(rule.resources.iter().cloned());
                g.prompts.extend(rule.prompts.iter().cloned());
            }
        }
        Some(Arc::new(g))
    }
}

impl Grants {
    pub fn allows(&self, kind: Kind, name: &str) -> bool {
        let patterns = match kind {
            Kind::Tool => &self.tools,
            Kind::Resource => &self.resources,
            Kind::Prompt => &self.prompts,
        };
        patterns.iter().any(|p| matches(p, name))
    }

    /// Why a client request may not go on, or `None` when it may.
    pub fn refuse(&self, msg: &Message) -> Option<String> {
        let (kind, key) = match msg.method()? {
            "tools/call" => (Kind::Tool, "name"),
            "prompts/get" => (Kind::Prompt, "name"),
            "resources/read" | "resources/subscribe" => (Kind::Resource, "uri"),
            _ => return None,
        };
        let name = msg.param_str(key).unwrap_or_default();
        (!self.allows(kind, &name)).then(|| format!("{} `{name}` is not allowed for this principal", kind.label()))
    }

    /// A list result with what the caller may not use left out; `None` when nothing changes
    /// (or the response is not a list result of these kinds).
    pub fn filter_list(&self, method: &str, response: &[u8]) -> Option<Bytes> {
        let (kind, field, key) = match method {
            "tools/list" => (Kind::Tool, "tools", "name"),
            "prompts/list" => (Kind::Prompt, "prompts", "name"),
            "resources/list" => (Kind::Resource, "resources", "uri"),
            "resources/templates/list" => (Kind::Resource, "resourceTemplates", "uriTemplate"),
            _ => return None,
        };
        let mut v: Value = serde_json::from_slice(response).ok()?;
        let items = v.get_mut("result")?.get_mut(field)?.as_array_mut()?;
        let before = items.len();
        items.retain(|item| item.get(key).and_then(Value::as_str).is_some_and(|n| self.allows(kind, n)));
        (items.len() != before).then(|| Bytes::from(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;

    fn rule(principals: &[&str], scopes: &[&str], tools: &[&str]) -> AllowRule {
        AllowRule {
            principals: principals.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            tools: tools.iter().map(|s| s.to_string()).collect(),
            resources: vec!["*".into()],
            prompts: vec![],
        }
    }

    fn caller(name: &str, scopes: &[&str]) -> Caller {
        Caller(
            Some(Arc::new(Principal { name: name.into(), scopes: scopes.iter().map(|s| s.to_string()).collect() })),
            None,
        )
    }

    #[test]
    fn grants_are_the_union_of_matching_rules() {
        let p = Policy::new(&[rule(&["alice"], &[], &["echo"]), rule(&[], &["admin"], &["admin_*"])]);
        let alice = p.grants(&caller("alice", &[])).unwrap();
        assert!(alice.allows(Kind::Tool, "echo") && !alice.allows(Kind::Tool, "admin_reset"));
        assert!(!alice.allows(Kind::Prompt, "greet"));
        let bob = p.grants(&caller("bob", &["admin"])).unwrap();
        assert!(bob.allows(Kind::Tool, "admin_reset") && !bob.allows(Kind::Tool, "echo"));
        let nobody = p.grants(&caller("carol", &[])).unwrap();
        assert!(!nobody.allows(Kind::Tool, "echo") && !nobody.allows(Kind::Resource, "file:///x"));
        assert!(Policy::new(&[]).grants(&caller("x", &[])).is_none());
    }

    #[test]
    fn lists_lose_what_is_not_granted() {
        let p = Policy::new(&[rule(&["alice"], &[], &["echo"])]);
        let g = p.grants(&caller("alice", &[])).unwrap();
        let resp = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"add"}]}}"#;
        let out: Value = serde_json::from_slice(&g.filter_list("tools/list", resp).unwrap()).unwrap();
        assert_eq!(out["result"]["tools"], serde_json::json!([{"name": "echo"}]));
        assert!(g.filter_list("tools/call", resp).is_none());
        let call = Message::parse(&Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add"}}"#,
        ))
        .unwrap();
        assert!(g.refuse(&call).unwrap().contains("`add`"));
    }
}
