//! Reads what prost-build cannot: the `(workerbus.method)` and
//! `(workerbus.service)` options (prost-build drops extensions), the
//! comments of services and rpcs, the names prost-build takes in each
//! package's module, and the structure of every message, from the compiled
//! descriptor pool; validates them and derives message names, Rust names
//! (with `names.rs`) and fingerprints.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, EnumDescriptor, ExtensionDescriptor, Kind,
    MessageDescriptor, MethodDescriptor, ServiceDescriptor, Value,
};

use crate::docs;
use crate::model::{MethodOptions, RpcKind};
use crate::names::{self, MethodNames, ServiceNames};

/// The name of `options.proto` in the include namespace.
pub(crate) const OPTIONS_FILE: &str = "workerbus/options.proto";

/// Everything derived from the pool for one service.
#[derive(Clone, Debug)]
pub(crate) struct ServiceInfo {
    /// The service's name as declared, e.g. `Greeter`.
    pub(crate) proto_name: String,
    pub(crate) names: ServiceNames,
    /// Its comment, as rustdoc lines.
    pub(crate) docs: Vec<String>,
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
    pub(crate) names: MethodNames,
    pub(crate) message_name: String,
    /// The message name set by the `name` option, if any.
    pub(crate) explicit_name: Option<String>,
    /// Its comment, as rustdoc lines.
    pub(crate) docs: Vec<String>,
    pub(crate) request: (String, u64),
    pub(crate) response: (String, u64),
    pub(crate) options: MethodOptions,
}

/// The Rust names chosen in the build script (`Builder::rust_name`), by the
/// full name of a service or an rpc (`pkg.Svc`, `pkg.Svc.Rpc`).
pub(crate) type RustNames = BTreeMap<String, String>;

/// Analyzes every service in the pool, keyed by full name.
pub(crate) fn analyze(
    pool: &DescriptorPool,
    rust_names: &RustNames,
) -> Result<HashMap<String, ServiceInfo>, String> {
    let method_ext = pool.get_extension_by_name("workerbus.method");
    let service_ext = pool.get_extension_by_name("workerbus.service");
    let mut fingerprints = Fingerprints::default();
    let mut taken = taken_type_names(pool)?;
    let mut used = BTreeSet::new();
    let mut services = HashMap::new();
    for service in pool.services() {
        let context = Context {
            method_ext: method_ext.as_ref(),
            service_ext: service_ext.as_ref(),
            rust_names,
        };
        let package_taken = taken.entry(service.package_name().to_owned()).or_default();
        let info = analyze_service(
            &service,
            &context,
            package_taken,
            &mut fingerprints,
            &mut used,
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
    if let Some((path, name)) = rust_names.iter().find(|(path, _)| !used.contains(*path)) {
        return Err(format!(
            "{}: no service or rpc of the compiled files is named {path}",
            override_call(path, name)
        ));
    }
    Ok(services)
}

/// What every service's analysis reads.
struct Context<'a> {
    method_ext: Option<&'a ExtensionDescriptor>,
    service_ext: Option<&'a ExtensionDescriptor>,
    rust_names: &'a RustNames,
}

/// How an override appears in errors: as the build script wrote it.
fn override_call(path: &str, name: &str) -> String {
    format!("rust_name({path:?}, {name:?})")
}

/// The type-namespace names prost-build and the include file take in each
/// package's module, before any service is named: the messages' and enums'
/// types, the modules of messages with nested types or oneofs, and the
/// modules of child packages. Refuses two messages or enums that prost-build
/// would give one Rust name.
fn taken_type_names(pool: &DescriptorPool) -> Result<HashMap<String, HashSet<String>>, String> {
    let mut taken: HashMap<String, HashSet<String>> = HashMap::new();
    let mut owners: HashMap<(String, String), String> = HashMap::new();
    let packages: BTreeSet<String> = pool
        .files()
        .map(|file| file.package_name().to_owned())
        .collect();
    for file in pool.files() {
        let package = file.package_name().to_owned();
        let mut claim = |name: String, what: String| -> Result<(), String> {
            if let Some(first) = owners.get(&(package.clone(), name.clone())) {
                return Err(format!(
                    "{}: {what} and {first} both become `{name}` in Rust (prost-build names types in upper camel case and modules in snake case); rename one",
                    file.name()
                ));
            }
            owners.insert((package.clone(), name.clone()), what);
            taken.entry(package.clone()).or_default().insert(name);
            Ok(())
        };
        for message in file.messages() {
            claim(
                prost_type_name(message.name()),
                format!("message {}", message.full_name()),
            )?;
            let nested = message.child_messages().any(|child| !child.is_map_entry())
                || message.child_enums().next().is_some()
                || message.oneofs().any(|oneof| !oneof.is_synthetic());
            if nested {
                claim(
                    prost_module_name(message.name()),
                    format!(
                        "the module of message {}'s nested types",
                        message.full_name()
                    ),
                )?;
            }
        }
        for en in file.enums() {
            claim(
                prost_type_name(en.name()),
                format!("enum {}", en.full_name()),
            )?;
        }
    }
    for package in &packages {
        for child in &packages {
            let segment = match package.as_str() {
                "" => child.split('.').next(),
                _ => child
                    .strip_prefix(package)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .and_then(|rest| rest.split('.').next()),
            };
            if let Some(segment) = segment.filter(|segment| !segment.is_empty()) {
                taken
                    .entry(package.clone())
                    .or_default()
                    .insert(prost_module_name(segment));
            }
        }
    }
    Ok(taken)
}

/// A message's or an enum's Rust type name, as prost-build makes it.
fn prost_type_name(name: &str) -> String {
    let camel = name.to_upper_camel_case();
    if camel == "Self" {
        "Self_".to_owned()
    } else {
        camel
    }
}

/// A module name as prost-build makes it from a message or package name:
/// snake case, raw if a keyword.
fn prost_module_name(name: &str) -> String {
    let snake = name.to_snake_case();
    match snake.as_str() {
        "self" | "super" | "crate" | "extern" | "_" => format!("{snake}_"),
        _ if syn::parse_str::<syn::Ident>(&snake).is_err() || snake == "gen" => {
            format!("r#{snake}")
        }
        _ => snake,
    }
}

fn analyze_service(
    service: &ServiceDescriptor,
    context: &Context<'_>,
    taken: &mut HashSet<String>,
    fingerprints: &mut Fingerprints,
    used: &mut BTreeSet<String>,
) -> Result<ServiceInfo, String> {
    let service_options = extension(&service.options(), context.service_ext);
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

    let chosen = context.rust_names.get(service.full_name()).map(|name| {
        used.insert(service.full_name().to_owned());
        (name.as_str(), override_call(service.full_name(), name))
    });
    let service_names = names::name_service(service.name(), events, chosen, taken)?;

    let mut methods = Vec::new();
    for method in service.methods() {
        let info = analyze_method(&method, &prefix, context.method_ext, fingerprints)
            .and_then(|info| {
                if events {
                    check_event(&method, info)
                } else {
                    Ok(info)
                }
            })
            .map_err(|problem| format!("rpc {}: {problem}", method.name()))?;
        methods.push(info);
    }
    assign_message_names(&mut methods)?;

    let rpcs: Vec<(&str, Option<&str>)> = methods
        .iter()
        .map(|method| {
            let path = format!("{}.{}", service.full_name(), method.proto_name);
            let chosen = context.rust_names.get(&path).map(String::as_str);
            if chosen.is_some() {
                used.insert(path);
            }
            (method.proto_name.as_str(), chosen)
        })
        .collect();
    let method_names = names::name_methods(&rpcs, |rpc| {
        let path = format!("{}.{rpc}", service.full_name());
        override_call(&path, &context.rust_names[&path])
    })?;
    for (method, names) in methods.iter_mut().zip(method_names) {
        method.names = names;
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
    let source_info = service
        .parent_file()
        .file_descriptor_proto()
        .source_code_info
        .clone();
    Ok(ServiceInfo {
        proto_name: service.name().to_owned(),
        names: service_names,
        docs: docs::location_docs(source_info.as_ref(), service.path()),
        events,
        fingerprint: hasher.finish(),
        methods,
    })
}

/// Gives each method its message name: the `name` option's, else
/// `<prefix>.<rpc in snake case>`. Two rpcs whose names meet in snake case
/// (`GetHTTP`, `GetHttp`) are told apart in declaration order, as their Rust
/// names are (`svc.get_http`, `svc.get_http_rpc`); a `name` option that
/// another method's name already has is refused.
fn assign_message_names(methods: &mut [MethodInfo]) -> Result<(), String> {
    let chosen: Vec<Option<String>> = methods.iter().map(|m| m.explicit_name.clone()).collect();
    let defaults: Vec<String> = methods.iter().map(|m| m.message_name.clone()).collect();
    for (i, method) in methods.iter().enumerate() {
        let Some(name) = &chosen[i] else { continue };
        let clash = chosen
            .iter()
            .enumerate()
            .any(|(j, other)| j < i && other.as_ref() == Some(name))
            || defaults
                .iter()
                .enumerate()
                .any(|(j, default)| j != i && chosen[j].is_none() && default == name);
        if clash {
            return Err(format!(
                "rpc {}: the message name {name:?} is already used by another method of the service; give this one another `name`",
                method.proto_name
            ));
        }
    }
    let mut taken: HashSet<String> = chosen.iter().flatten().cloned().collect();
    for method in methods.iter_mut() {
        if method.explicit_name.is_some() {
            continue;
        }
        let mut name = method.message_name.clone();
        let mut n = 1;
        while taken.contains(&name) {
            name = if n == 1 {
                format!("{}_rpc", method.message_name)
            } else {
                format!("{}_rpc{n}", method.message_name)
            };
            n += 1;
        }
        taken.insert(name.clone());
        method.message_name = name;
    }
    Ok(())
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
    let mut explicit_name = None;
    if let Some(ext) = extension(&method.options(), method_ext) {
        if let Some(name) = string_field(&ext, "name") {
            check_message_name(&name).map_err(|problem| {
                format!("option (workerbus.method).name = {name:?}: {problem}")
            })?;
            explicit_name = Some(name);
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
    let input = method.input();
    let output = method.output();
    let source_info = method
        .parent_file()
        .file_descriptor_proto()
        .source_code_info
        .clone();
    Ok(MethodInfo {
        kind,
        proto_name: method.name().to_owned(),
        // Named with the other rpcs of the service, by `names::name_methods`.
        names: MethodNames::default(),
        message_name: explicit_name
            .clone()
            .unwrap_or_else(|| format!("{prefix}.{}", method.name().to_snake_case())),
        explicit_name,
        docs: docs::location_docs(source_info.as_ref(), method.path()),
        request: (input.full_name().to_owned(), fingerprints.message(&input)),
        response: (output.full_name().to_owned(), fingerprints.message(&output)),
        options,
    })
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
