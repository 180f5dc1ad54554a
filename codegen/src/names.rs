//! Rust names of generated items: what an rpc or a service is called in
//! Rust, and the escape a name gets when it is taken or cannot be written.
//!
//! The rules, in the order they apply (and as the README states them):
//!
//! - an rpc's method is its name in snake case (`GetUser` → `get_user`), a
//!   raw identifier if that is a keyword (`Type` → `r#type`); its
//!   message-name constant is in upper snake case (`GET_USER`) and, in an
//!   events service, its variant in upper camel case (`GetUser`);
//! - a service's items are named after it in upper camel case
//!   (`GreeterClient`, `GreeterHandler`, `GreeterServer`; for an events
//!   service `IndexerEvents`: `IndexerEmitter`, `IndexerEvent`,
//!   `IndexerEvents`) and its module in snake case (`greeter_service`);
//! - `Builder::rust_name` replaces the base of those names, never the
//!   message name that travels on the wire;
//! - a name that is taken, or cannot be written even as a raw identifier
//!   (`self`, `Self`, `super`, `crate`), gets `_rpc` (`new` → `new_rpc`),
//!   `_RPC` or `Rpc` (`GreeterRpcClient`) appended, then a number if that is
//!   taken too (`_rpc2`). Names are given in declaration order, so the first
//!   of two rpcs that meet on one name keeps it;
//! - a name chosen with `rust_name` is never escaped: if it is taken, or not
//!   a name of its kind, the schema is refused with an error naming the
//!   override.

use std::collections::HashSet;

use heck::{ToShoutySnakeCase, ToSnakeCase, ToUpperCamelCase};

/// Names an rpc's methods cannot take: the client's and the emitter's own
/// methods, and those of the traits they implement that are called with
/// method syntax (an rpc `clone` would shadow `Clone::clone`). With what
/// each is, for the error or note that mentions it.
pub(crate) const RESERVED_METHODS: &[(&str, &str)] = &[
    ("new", "the constructor of clients and emitters"),
    ("with_options", "a method of clients"),
    ("channel", "a method of clients"),
    ("from_context", "a constructor of emitters"),
    ("clone", "the method of `Clone`"),
    ("clone_from", "a method of `Clone`"),
    ("clone_into", "a method of `ToOwned`"),
    ("to_owned", "the method of `ToOwned`"),
    ("fmt", "the method of `Debug`"),
    ("into", "the method of `Into`"),
    ("try_into", "the method of `TryInto`"),
    ("from", "the function of `From`"),
    ("try_from", "the function of `TryFrom`"),
];

/// The name of the constant every `<svc>_service` module has.
const SCHEMA_CONST: &str = "SCHEMA";

/// Keywords that cannot be raw identifiers.
const NOT_RAW: &[&str] = &["self", "Self", "super", "crate", "_"];

/// The Rust names of one rpc's items.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MethodNames {
    /// The method of the client, the handler and the emitter (`r#type` for a
    /// keyword).
    pub(crate) method: String,
    /// The client's method with options (`get_user_with`).
    pub(crate) method_with: String,
    /// The message-name constant (`GET_USER`).
    pub(crate) constant: String,
    /// The variant of an events service's event enum (`GetUser`).
    pub(crate) variant: String,
    /// Why the method is not named after the rpc, for its docs.
    pub(crate) note: Option<String>,
}

/// The Rust names of one service's items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceNames {
    /// The base of the generated type names (`Greeter` for `GreeterClient`;
    /// `Indexer` for an events service `IndexerEvents`).
    pub(crate) base: String,
    /// The module of message names and schema (`greeter_service`).
    pub(crate) module: String,
    /// Why the items are not named after the service, for their docs.
    pub(crate) note: Option<String>,
}

impl ServiceNames {
    /// The type names generated for a service with this base.
    pub(crate) fn types(base: &str, events: bool) -> [String; 3] {
        let suffixes = if events {
            ["Emitter", "Event", "Events"]
        } else {
            ["Client", "Handler", "Server"]
        };
        suffixes.map(|suffix| format!("{base}{suffix}"))
    }
}

/// Names the rpcs of one service, in declaration order. Each rpc is its
/// proto name and the override given for it with `rust_name`, if any; an
/// error names the rpc at fault.
pub(crate) fn name_methods(
    rpcs: &[(&str, Option<&str>)],
    override_call: impl Fn(&str) -> String,
) -> Result<Vec<MethodNames>, String> {
    let mut methods: HashSet<String> = RESERVED_METHODS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let mut constants: HashSet<String> = HashSet::from([SCHEMA_CONST.to_owned()]);
    let mut variants: HashSet<String> = HashSet::from(["Self".to_owned()]);
    let mut named = Vec::with_capacity(rpcs.len());
    for &(proto_name, chosen) in rpcs {
        let (method, note) = match chosen {
            Some(chosen) => {
                let call = override_call(proto_name);
                check_snake_name(chosen)
                    .map_err(|problem| format!("rpc {proto_name}: {call}: `{chosen}` {problem}"))?;
                for name in [chosen.to_owned(), format!("{chosen}_with")] {
                    if let Some(what) = taken_method(&methods, &name) {
                        return Err(format!(
                            "rpc {proto_name}: {call}: `{name}` is {what}; choose another name"
                        ));
                    }
                }
                (chosen.to_owned(), None)
            }
            None => {
                let snake = proto_name.to_snake_case();
                let usable = !NOT_RAW.contains(&snake.as_str());
                let free = |name: &str| {
                    taken_method(&methods, name).is_none()
                        && taken_method(&methods, &format!("{name}_with")).is_none()
                };
                if usable && free(&snake) {
                    (snake, None)
                } else {
                    let escaped = escape(&snake, "_rpc", |name| {
                        (usable || name != snake) && free(name)
                    });
                    let why = if !usable {
                        format!("`{snake}` cannot be a method name")
                    } else {
                        match taken_method(&methods, &snake)
                            .or_else(|| taken_method(&methods, &format!("{snake}_with")))
                        {
                            Some(what) => format!("`{snake}` is {what}"),
                            None => format!("`{snake}` is taken"),
                        }
                    };
                    let note = format!(
                        "The rpc `{proto_name}` is named `{escaped}`: {why} (`workerbus_build::Builder::rust_name` chooses another name)."
                    );
                    (escaped, Some(note))
                }
            }
        };
        methods.insert(method.clone());
        let method_with = format!("{method}_with");
        methods.insert(method_with.clone());

        let base = chosen.unwrap_or(proto_name);
        let constant = escape(&base.to_shouty_snake_case(), "_RPC", |name| {
            !constants.contains(name)
        });
        constants.insert(constant.clone());
        let variant = escape(&base.to_upper_camel_case(), "Rpc", |name| {
            !variants.contains(name)
        });
        variants.insert(variant.clone());

        named.push(MethodNames {
            method: raw_if_keyword(&method),
            method_with,
            constant,
            variant,
            note,
        });
    }
    Ok(named)
}

/// Names a service's items, given the type and module names already taken
/// in its package's module (prost-build's types and modules, the package's
/// child packages, the services named before it). Takes the names it gives.
pub(crate) fn name_service(
    proto_name: &str,
    events: bool,
    chosen: Option<(&str, String)>,
    taken: &mut HashSet<String>,
) -> Result<ServiceNames, String> {
    let free = |base: &str, snake: &str, taken: &HashSet<String>| {
        let module = format!("{snake}_service");
        ServiceNames::types(base, events)
            .iter()
            .chain([&module])
            .find(|name| taken.contains(*name))
            .cloned()
    };
    let names = match chosen {
        Some((chosen, call)) => {
            if !chosen.starts_with(|c: char| c.is_ascii_uppercase())
                || chosen.contains('_')
                || syn::parse_str::<syn::Ident>(chosen).is_err()
            {
                return Err(format!(
                    "{call}: `{chosen}` is not a type name in upper camel case, such as `SearchApi`"
                ));
            }
            let snake = chosen.to_snake_case();
            if let Some(name) = free(chosen, &snake, taken) {
                return Err(format!(
                    "{call}: `{name}` would be generated, and the name is already taken in the package's module; choose another name"
                ));
            }
            ServiceNames {
                base: chosen.to_owned(),
                module: format!("{snake}_service"),
                note: None,
            }
        }
        None => {
            let camel = proto_name.to_upper_camel_case();
            let base = if events {
                match camel.strip_suffix("Events") {
                    Some(base) if !base.is_empty() => base.to_owned(),
                    _ => camel,
                }
            } else {
                camel
            };
            let snake = proto_name.to_snake_case();
            match free(&base, &snake, taken) {
                None => ServiceNames {
                    base,
                    module: format!("{snake}_service"),
                    note: None,
                },
                Some(clash) => {
                    // Escape the type base and the module together, so that
                    // a service's items keep one name.
                    let mut n = 1;
                    loop {
                        let suffix = if n == 1 { String::new() } else { n.to_string() };
                        let escaped_base = format!("{base}Rpc{suffix}");
                        let escaped_snake = format!("{snake}_rpc{suffix}");
                        if free(&escaped_base, &escaped_snake, taken).is_none() {
                            let note = format!(
                                "Named `{escaped_base}`: `{clash}` is already taken in the package's module (`workerbus_build::Builder::rust_name` chooses another name)."
                            );
                            break ServiceNames {
                                base: escaped_base,
                                module: format!("{escaped_snake}_service"),
                                note: Some(note),
                            };
                        }
                        n += 1;
                    }
                }
            }
        }
    };
    taken.extend(ServiceNames::types(&names.base, events));
    taken.insert(names.module.clone());
    Ok(names)
}

/// What a method name already is, if it is taken.
fn taken_method(taken: &HashSet<String>, name: &str) -> Option<String> {
    if let Some((_, what)) = RESERVED_METHODS
        .iter()
        .find(|(reserved, _)| *reserved == name)
    {
        return Some((*what).to_owned());
    }
    taken
        .contains(name)
        .then(|| "the name of another rpc's method".to_owned())
}

/// `name`, or `name` + `suffix` (+ a number from 2) for the first that is
/// free.
fn escape(name: &str, suffix: &str, free: impl Fn(&str) -> bool) -> String {
    if free(name) {
        return name.to_owned();
    }
    let mut n = 1;
    loop {
        let candidate = if n == 1 {
            format!("{name}{suffix}")
        } else {
            format!("{name}{suffix}{n}")
        };
        if free(&candidate) {
            return candidate;
        }
        n += 1;
    }
}

/// Checks a method name chosen with `rust_name`.
fn check_snake_name(name: &str) -> Result<(), &'static str> {
    if NOT_RAW.contains(&name) {
        return Err("cannot be a method name");
    }
    let identifier = syn::parse_str::<syn::Ident>(name).is_ok() || is_keyword(name);
    let snake = !name.chars().any(char::is_uppercase) && !name.trim_matches('_').contains("__");
    if !identifier || !snake {
        return Err("is not a method name in snake case, such as `create_user`");
    }
    Ok(())
}

/// Whether `name` is a keyword a raw identifier can spell.
fn is_keyword(name: &str) -> bool {
    // `gen` is reserved from edition 2024, which syn does not know by default.
    name == "gen"
        || (syn::parse_str::<syn::Ident>(name).is_err()
            && syn::parse_str::<syn::Ident>(&format!("r#{name}")).is_ok())
}

/// A method name as an identifier: raw if it is a keyword.
fn raw_if_keyword(name: &str) -> String {
    if is_keyword(name) {
        format!("r#{name}")
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods(rpcs: &[(&str, Option<&str>)]) -> Result<Vec<MethodNames>, String> {
        name_methods(rpcs, |rpc| format!("rust_name(\"pkg.Svc.{rpc}\", ..)"))
    }

    fn method_names(rpcs: &[&str]) -> Vec<String> {
        let rpcs: Vec<_> = rpcs.iter().map(|rpc| (*rpc, None)).collect();
        methods(&rpcs)
            .unwrap()
            .into_iter()
            .map(|names| names.method)
            .collect()
    }

    #[test]
    fn rpcs_are_named_in_snake_case_and_keywords_are_raw() {
        assert_eq!(
            method_names(&["GetUser", "Type", "Gen", "Async", "Match"]),
            ["get_user", "r#type", "r#gen", "r#async", "r#match"]
        );
        let names = &methods(&[("Type", None)]).unwrap()[0];
        assert_eq!(names.method_with, "type_with");
        assert_eq!(names.constant, "TYPE");
        assert_eq!(names.variant, "Type");
        assert_eq!(names.note, None);
    }

    #[test]
    fn taken_names_get_a_suffix() {
        assert_eq!(
            method_names(&["New", "Clone", "Channel", "WithOptions", "Self", "Super"]),
            [
                "new_rpc",
                "clone_rpc",
                "channel_rpc",
                "with_options_rpc",
                "self_rpc",
                "super_rpc"
            ]
        );
        let names = &methods(&[("New", None)]).unwrap()[0];
        assert_eq!(names.method_with, "new_rpc_with");
        assert_eq!(names.constant, "NEW");
        let note = names.note.as_deref().unwrap();
        assert!(note.contains("`new` is the constructor"), "{note}");
        assert!(note.contains("rust_name"), "{note}");
    }

    #[test]
    fn rpcs_that_meet_on_one_name_are_told_apart_in_order() {
        assert_eq!(
            method_names(&["GetHTTP", "GetHttp", "get_http", "Get", "GetWith"]),
            [
                "get_http",
                "get_http_rpc",
                "get_http_rpc2",
                "get",
                "get_with_rpc"
            ]
        );
        let names = methods(&[("GetHTTP", None), ("GetHttp", None), ("Schema", None)]).unwrap();
        assert_eq!(names[0].constant, "GET_HTTP");
        assert_eq!(names[1].constant, "GET_HTTP_RPC");
        assert_eq!(names[2].constant, "SCHEMA_RPC");
        assert_eq!(names[1].variant, "GetHttpRpc");
        let self_variant = &methods(&[("Self", None)]).unwrap()[0];
        assert_eq!(self_variant.variant, "SelfRpc");
    }

    #[test]
    fn an_override_names_the_method_constant_and_variant() {
        let names = &methods(&[("New", Some("create"))]).unwrap()[0];
        assert_eq!(names.method, "create");
        assert_eq!(names.method_with, "create_with");
        assert_eq!(names.constant, "CREATE");
        assert_eq!(names.variant, "Create");
        assert_eq!(names.note, None);
        // It takes precedence over a later rpc's own name.
        assert_eq!(
            methods(&[("New", Some("get")), ("Get", None)]).unwrap()[1].method,
            "get_rpc"
        );
    }

    #[test]
    fn an_override_that_cannot_be_used_is_refused_by_name() {
        for (chosen, problem) in [
            ("channel", "`channel` is a method of clients"),
            ("Create", "not a method name in snake case"),
            ("two words", "not a method name"),
            ("self", "cannot be a method name"),
            ("get", "`get` is the name of another rpc's method"),
        ] {
            let error = methods(&[("Get", None), ("New", Some(chosen))]).unwrap_err();
            assert!(
                error.starts_with("rpc New: rust_name(\"pkg.Svc.New\", ..)"),
                "{error}"
            );
            assert!(error.contains(problem), "{chosen}: {error}");
        }
    }

    #[test]
    fn services_take_their_names_in_their_package() {
        let mut taken = HashSet::from(["GreeterClient".to_owned(), "search_service".to_owned()]);
        let greeter = name_service("Greeter", false, None, &mut taken).unwrap();
        assert_eq!(greeter.base, "GreeterRpc");
        assert_eq!(greeter.module, "greeter_rpc_service");
        assert!(
            greeter
                .note
                .unwrap()
                .contains("`GreeterClient` is already taken")
        );
        let search = name_service("Search", false, None, &mut taken).unwrap();
        assert_eq!(
            (search.base.as_str(), search.module.as_str()),
            ("SearchRpc", "search_rpc_service")
        );
        let events = name_service("IndexerEvents", true, None, &mut taken).unwrap();
        assert_eq!(
            (events.base.as_str(), events.module.as_str()),
            ("Indexer", "indexer_events_service")
        );
        // A second service meeting the first's names.
        let again = name_service("indexer_events", true, None, &mut taken).unwrap();
        assert_eq!(again.base, "IndexerRpc");
        assert!(taken.contains("IndexerEmitter") && taken.contains("IndexerRpcEvents"));
    }

    #[test]
    fn a_service_override_is_checked() {
        let mut taken = HashSet::from(["ApiClient".to_owned()]);
        let call = || "rust_name(\"pkg.Svc\", ..)".to_owned();
        let named = name_service("Svc", false, Some(("Search", call())), &mut taken).unwrap();
        assert_eq!(
            (named.base.as_str(), named.module.as_str()),
            ("Search", "search_service")
        );
        let error = name_service("Svc", false, Some(("Api", call())), &mut taken).unwrap_err();
        assert!(error.contains("`ApiClient` would be generated"), "{error}");
        let error = name_service("Svc", false, Some(("my_api", call())), &mut taken).unwrap_err();
        assert!(error.contains("upper camel case"), "{error}");
    }
}
