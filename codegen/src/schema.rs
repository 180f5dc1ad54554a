//! Reads what prost-build cannot: the `(workerbus.method)` and
//! `(workerbus.service)` options (prost-build drops extensions) and the
//! structure of every message, from the compiled descriptor pool; validates
//! them and derives message names and fingerprints.

use std::collections::{BTreeMap, HashMap, HashSet};

use heck::{ToShoutySnakeCase, ToSnakeCase};
use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, EnumDescriptor, ExtensionDescriptor, Kind,
    MessageDescriptor, MethodDescriptor, ServiceDescriptor, Value,
};

use crate::model::{MethodOptions, RpcKind};

/// The name of `options.proto` in the include namespace.
pub(crate) const OPTIONS_FILE: &str = "workerbus/options.proto";

/// Everything derived from the pool for one service.
#[derive(Clone, Debug)]
pub(crate) struct ServiceInfo {
    pub(crate) snake_name: String,
    /// `(workerbus.service).events`: the rpcs are events the worker sends.
    pub(crate) events: bool,
    pub(crate) fingerprint: u64,
    pub(crate) methods: Vec<MethodInfo>,
}

/// Everything derived from the pool for one method.
#[derive(Clone, Debug)]
pub(crate) struct MethodInfo {
    pub(crate) kind: RpcKind,
    pub(crate) proto_name: String,
    pub(crate) rust_name: String,
    pub(crate) message_name: String,
    pub(crate) const_name: String,
    pub(crate) request: (String, u64),
    pub(crate) response: (String, u64),
    pub(crate) options: MethodOptions,
}

/// Names the generated client already uses for its own methods.
const CLIENT_METHODS: &[&str] = &[
    "new",
    "with_options",
    "channel",
    "clone",
    "fmt",
    "from_context",
];

/// Analyzes every service in the pool, keyed by full name.
pub(crate) fn analyze(pool: &DescriptorPool) -> Result<HashMap<String, ServiceInfo>, String> {
    let method_ext = pool.get_extension_by_name("workerbus.method");
    let service_ext = pool.get_extension_by_name("workerbus.service");
    let mut fingerprints = Fingerprints::default();
    let mut services = HashMap::new();
    for service in pool.services() {
        let info = analyze_service(
            &service,
            method_ext.as_ref(),
            service_ext.as_ref(),
            &mut fingerprints,
        )
        .map_err(|problem| {
            format!(
                "{}: service {}: {problem}",
                service.parent_file().name(),
                service.full_name()
            )
        })?;
        services.insert(service.full_name().to_owned(), info);
    }
    Ok(services)
}

fn analyze_service(
    service: &ServiceDescriptor,
    method_ext: Option<&ExtensionDescriptor>,
    service_ext: Option<&ExtensionDescriptor>,
    fingerprints: &mut Fingerprints,
) -> Result<ServiceInfo, String> {
    let service_options = extension(&service.options(), service_ext);
    let events = service_options
        .as_ref()
        .and_then(|options| field(options, "events"))
        .and_then(|value| value.as_bool())
        .unwrap_or(false);
    let prefix = match service_options {
        Some(options) => match string_field(&options, "name") {
            Some(name) => {
                check_message_name(&name).map_err(|problem| {
                    format!("option (workerbus.service).name = {name:?}: {problem}")
                })?;
                name
            }
            None => service.name().to_snake_case(),
        },
        None => service.name().to_snake_case(),
    };
    let mut methods = Vec::new();
    let mut message_names = HashSet::new();
    let mut rust_names = HashSet::new();
    for method in service.methods() {
        let info = analyze_method(&method, &prefix, method_ext, fingerprints)
            .and_then(|info| {
                if events {
                    check_event(&method, info)
                } else {
                    Ok(info)
                }
            })
            .map_err(|problem| format!("rpc {}: {problem}", method.name()))?;
        if info.const_name == "SCHEMA"
            || methods
                .iter()
                .any(|m: &MethodInfo| m.const_name == info.const_name)
        {
            return Err(format!(
                "rpc {}: its message-name constant would be `{}`, a name already taken in the `{}_service` module; rename the rpc",
                method.name(),
                info.const_name,
                service.name().to_snake_case()
            ));
        }
        if !message_names.insert(info.message_name.clone()) {
            return Err(format!(
                "rpc {}: the message name {:?} is already used by another method of the service",
                method.name(),
                info.message_name
            ));
        }
        let base = info.rust_name.trim_start_matches("r#");
        for name in [base.to_owned(), format!("{base}_with")] {
            if CLIENT_METHODS.contains(&name.as_str()) || !rust_names.insert(name.clone()) {
                return Err(format!(
                    "rpc {}: the generated client would have two methods named `{name}`; rename the rpc",
                    method.name()
                ));
            }
        }
        methods.push(info);
    }
    let mut hasher = Fnv::new();
    hasher.write_str(service.full_name());
    for method in &methods {
        hasher.write_str(&method.message_name);
        hasher.write_str(method.kind.variant());
        hasher.write_u64(method.request.1);
        hasher.write_u64(method.response.1);
    }
    if events {
        hasher.write_str("events");
    }
    Ok(ServiceInfo {
        events,
        snake_name: service.name().to_snake_case(),
        fingerprint: hasher.finish(),
        methods,
    })
}

/// Checks an rpc of an events service: one message in, nothing out, no
/// options but its name.
fn check_event(method: &MethodDescriptor, mut info: MethodInfo) -> Result<MethodInfo, String> {
    const SHAPE: &str =
        "an event is declared `rpc E(EventMessage) returns (google.protobuf.Empty)`";
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(format!("an event cannot stream; {SHAPE}"));
    }
    if method.output().full_name() != EMPTY {
        return Err(format!(
            "an event returns google.protobuf.Empty, not {}; {SHAPE}",
            method.output().full_name()
        ));
    }
    if info.options != MethodOptions::default() {
        return Err(
            "an event takes no option but `name` (no timeout, retries, idempotent or one_way)"
                .into(),
        );
    }
    info.kind = RpcKind::OneWay;
    Ok(info)
}

/// The full name of `google.protobuf.Empty`.
const EMPTY: &str = "google.protobuf.Empty";

fn analyze_method(
    method: &MethodDescriptor,
    prefix: &str,
    method_ext: Option<&ExtensionDescriptor>,
    fingerprints: &mut Fingerprints,
) -> Result<MethodInfo, String> {
    let mut kind = RpcKind::new(method.is_client_streaming(), method.is_server_streaming());
    let mut options = MethodOptions::default();
    let mut message_name = format!("{prefix}.{}", method.name().to_snake_case());
    if let Some(ext) = extension(&method.options(), method_ext) {
        if let Some(name) = string_field(&ext, "name") {
            check_message_name(&name).map_err(|problem| {
                format!("option (workerbus.method).name = {name:?}: {problem}")
            })?;
            message_name = name;
        }
        options.timeout_ms = field(&ext, "timeout_ms").and_then(|v| v.as_u64());
        options.retries = field(&ext, "retries").and_then(|v| v.as_u32());
        options.idempotent = field(&ext, "idempotent")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        options.one_way = field(&ext, "one_way")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if options.one_way {
            if kind != RpcKind::Unary {
                return Err(
                    "option (workerbus.method).one_way: a one-way message cannot stream".into(),
                );
            }
            if method.output().full_name() != EMPTY {
                return Err(format!(
                    "option (workerbus.method).one_way: a one-way message is never answered, so it must return google.protobuf.Empty, not {}",
                    method.output().full_name()
                ));
            }
            kind = RpcKind::OneWay;
        }
        if options.timeout_ms == Some(0) {
            return Err(
                "option (workerbus.method).timeout_ms = 0: a timeout must be at least 1 ms".into(),
            );
        }
        if options.retries.is_some_and(|retries| retries > 0) && !options.idempotent {
            return Err(format!(
                "option (workerbus.method).retries = {} needs idempotent: true; retries apply only to idempotent methods",
                options.retries.unwrap_or_default()
            ));
        }
        if options.retries.is_some_and(|retries| retries > 0) && kind != RpcKind::Unary {
            let what = if kind == RpcKind::OneWay {
                "a one-way message is never retried"
            } else {
                "a streaming call is never retried"
            };
            return Err(format!(
                "option (workerbus.method).retries = {}: {what}; retries apply only to unary methods",
                options.retries.unwrap_or_default()
            ));
        }
    }
    let rust_name = rust_ident(&method.name().to_snake_case());
    let input = method.input();
    let output = method.output();
    Ok(MethodInfo {
        kind,
        proto_name: method.name().to_owned(),
        const_name: method.name().to_shouty_snake_case(),
        rust_name,
        message_name,
        request: (input.full_name().to_owned(), fingerprints.message(&input)),
        response: (output.full_name().to_owned(), fingerprints.message(&output)),
        options,
    })
}

/// A method name as a Rust identifier: raw if it is a keyword, with a
/// trailing underscore if it is one of the keywords that cannot be raw.
fn rust_ident(name: &str) -> String {
    match name {
        "self" | "super" | "crate" | "Self" => format!("{name}_"),
        // Reserved in edition 2024, which syn does not know by default.
        "gen" => format!("r#{name}"),
        _ if syn::parse_str::<syn::Ident>(name).is_err() => format!("r#{name}"),
        _ => name.to_owned(),
    }
}

/// Message names travel in frames and appear in logs: printable, no spaces.
fn check_message_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a message name cannot be empty");
    }
    if name.len() > 1024 {
        return Err("a message name is at most 1024 bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a message name cannot contain whitespace or control characters");
    }
    if name.starts_with('$') {
        return Err("names starting with `$` are reserved for the runtime's control exchanges");
    }
    Ok(())
}

fn extension(
    options: &DynamicMessage,
    ext: Option<&ExtensionDescriptor>,
) -> Option<DynamicMessage> {
    let ext = ext?;
    if !options.has_extension(ext) {
        return None;
    }
    match options.get_extension(ext).into_owned() {
        Value::Message(message) => Some(message),
        _ => None,
    }
}

fn field(message: &DynamicMessage, name: &str) -> Option<Value> {
    if !message.has_field_by_name(name) {
        return None;
    }
    message
        .get_field_by_name(name)
        .map(|value| value.into_owned())
}

fn string_field(message: &DynamicMessage, name: &str) -> Option<String> {
    field(message, name).and_then(|value| value.as_str().map(str::to_owned))
}

/// Fingerprints of messages: a hash of the canonical description of every
/// message and enum the message reaches (field numbers, names, types,
/// cardinality; enum value numbers and names), so that any change a peer
/// could notice changes the fingerprint. Cached per message.
#[derive(Default)]
struct Fingerprints {
    cache: HashMap<String, u64>,
}

impl Fingerprints {
    fn message(&mut self, message: &MessageDescriptor) -> u64 {
        if let Some(&fingerprint) = self.cache.get(message.full_name()) {
            return fingerprint;
        }
        let mut reached = BTreeMap::new();
        describe_message(message, &mut reached);
        let mut hasher = Fnv::new();
        hasher.write_str(message.full_name());
        for (name, description) in &reached {
            hasher.write_str(name);
            hasher.write_str(description);
        }
        let fingerprint = hasher.finish();
        self.cache
            .insert(message.full_name().to_owned(), fingerprint);
        fingerprint
    }
}

fn describe_message(message: &MessageDescriptor, reached: &mut BTreeMap<String, String>) {
    if reached.contains_key(message.full_name()) {
        return;
    }
    // Reserve the entry first: recursive messages reach themselves.
    reached.insert(message.full_name().to_owned(), String::new());
    let mut fields: Vec<_> = message.fields().collect();
    fields.sort_by_key(|field| field.number());
    let mut description = String::from("message{");
    for field in fields {
        let kind = match field.kind() {
            Kind::Message(inner) => {
                describe_message(&inner, reached);
                format!("message:{}", inner.full_name())
            }
            Kind::Enum(inner) => {
                describe_enum(&inner, reached);
                format!("enum:{}", inner.full_name())
            }
            scalar => format!("{scalar:?}").to_lowercase(),
        };
        let cardinality = match field.cardinality() {
            Cardinality::Optional if field.supports_presence() => "optional",
            Cardinality::Optional => "singular",
            Cardinality::Required => "required",
            Cardinality::Repeated if field.is_packed() => "packed",
            Cardinality::Repeated => "repeated",
        };
        let oneof = field
            .containing_oneof()
            .map(|oneof| format!(" oneof:{}", oneof.name()))
            .unwrap_or_default();
        description.push_str(&format!(
            "{} {} {kind} {cardinality}{oneof};",
            field.number(),
            field.name()
        ));
    }
    description.push('}');
    reached.insert(message.full_name().to_owned(), description);
}

fn describe_enum(en: &EnumDescriptor, reached: &mut BTreeMap<String, String>) {
    if reached.contains_key(en.full_name()) {
        return;
    }
    let mut values: Vec<_> = en
        .values()
        .map(|v| (v.number(), v.name().to_owned()))
        .collect();
    values.sort();
    let description = values
        .iter()
        .map(|(number, name)| format!("{number}={name};"))
        .collect::<String>();
    reached.insert(en.full_name().to_owned(), format!("enum{{{description}}}"));
}

/// 64-bit FNV-1a: stable across platforms, compilers and releases, which a
/// fingerprint compared between separately built programs must be.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Writes a length-prefixed string, so that ("ab", "c") ≠ ("a", "bc").
    fn write_str(&mut self, s: &str) {
        self.write_u64(s.len() as u64);
        self.write(s.as_bytes());
    }

    fn write_u64(&mut self, n: u64) {
        self.write(&n.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        let hash = |s: &str| {
            let mut h = Fnv::new();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn message_names_are_checked() {
        assert!(check_message_name("worker.search").is_ok());
        assert!(check_message_name("").is_err());
        assert!(check_message_name("has space").is_err());
        assert!(check_message_name(&"x".repeat(1025)).is_err());
        assert!(check_message_name("$workerbus.hello").is_err());
    }
}
