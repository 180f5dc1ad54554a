//! The emitter: a [`ServiceDef`] in, Rust tokens out.
//!
//! For a service `Embedder` it emits:
//!
//! - `embedder_service`: a module with the message-name constants
//!   (`EMBED = "embedder.embed"`) and the service's `SCHEMA`;
//! - `EmbedderClient`: a typed client over a `Channel` (`client.rs`);
//! - `EmbedderHandler`: the trait a worker implements, with native `async
//!   fn`s, and `EmbedderServer<H>`, which dispatches incoming calls to a
//!   handler (`server.rs`);
//! - for an events service, an emitter and a typed event stream instead of
//!   a client and a server (`events.rs`).
//!
//! Generated code reaches the runtime only through `<runtime>::__codegen`.

mod client;
mod events;
mod server;

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::model::ServiceDef;

use self::client::client;
use self::events::{emitter, event_stream};
use self::server::server;

/// What to emit, and where the runtime crate is.
#[derive(Clone)]
pub(crate) struct EmitOptions {
    pub(crate) client: bool,
    pub(crate) server: bool,
    pub(crate) runtime: syn::Path,
}

/// Emits the code of one service.
pub(crate) fn service(def: &ServiceDef, options: &EmitOptions) -> Result<TokenStream, String> {
    let rt = &options.runtime;
    let cg = quote!(#rt::__codegen);
    let names = names_module(def, &cg)?;
    if def.events {
        // Sent by the worker, received by the host: the emitter belongs with
        // the server side, the event stream with the client side.
        let emitter = if options.server {
            emitter(def, &cg)?
        } else {
            TokenStream::new()
        };
        let stream = if options.client {
            event_stream(def, &cg)?
        } else {
            TokenStream::new()
        };
        return Ok(quote! {
            #names
            #emitter
            #stream
        });
    }
    let client = if options.client {
        client(def, &cg)?
    } else {
        TokenStream::new()
    };
    let server = if options.server {
        server(def, &cg)?
    } else {
        TokenStream::new()
    };
    Ok(quote! {
        #names
        #client
        #server
    })
}

fn names_module(def: &ServiceDef, cg: &TokenStream) -> Result<TokenStream, String> {
    let module = ident(&def.module);
    let doc = format!(
        " Message names and schema of the `{}` service.",
        def.full_name
    );
    let consts = def.methods.iter().map(|method| {
        let name = format_ident!("{}", method.const_name);
        let value = &method.message_name;
        let doc = format!(
            " `{value}`: the message name of `{}.{}`.",
            def.proto_name, method.proto_name
        );
        quote! {
            #[doc = #doc]
            pub const #name: &str = #value;
        }
    });
    let methods = def.methods.iter().map(|method| {
        let name = &method.message_name;
        let (request, request_fp) = (&method.request.proto_name, method.request.fingerprint);
        let (response, response_fp) = (&method.response.proto_name, method.response.fingerprint);
        let kind = format_ident!("{}", method.kind.variant());
        let path = format!("/{}/{}", def.full_name, method.proto_name);
        quote! {
            #cg::method_schema(#name, (#request, #request_fp), (#response, #response_fp), #cg::MethodKind::#kind, #path)
        }
    });
    let full_name = &def.full_name;
    let fingerprint = def.fingerprint;
    let schema_doc = format!(
        " The schema of `{full_name}` this program was built with: its methods and a fingerprint of their messages."
    );
    Ok(quote! {
        #[doc = #doc]
        pub mod #module {
            #(#consts)*
            #[doc = #schema_doc]
            pub const SCHEMA: #cg::ServiceSchema = #cg::service_schema(
                #full_name,
                &[#(#methods),*],
                #fingerprint,
            );
        }
    })
}

/// Lints a method's name draws from Clippy in the user's crate: an rpc
/// `FromJson` is a method `from_json(&self, ..)`, which `wrong_self_convention`
/// expects to take no `self`.
pub(super) fn method_lints(name: &str) -> TokenStream {
    let name = name.trim_start_matches("r#");
    if name.starts_with("from_") || name.starts_with("into_") {
        quote!(#[allow(clippy::wrong_self_convention)])
    } else {
        TokenStream::new()
    }
}

/// An identifier, raw if the name is a Rust keyword.
pub(super) fn ident(name: &str) -> syn::Ident {
    match name.strip_prefix("r#") {
        Some(raw) => syn::Ident::new_raw(raw, proc_macro2::Span::call_site()),
        None => format_ident!("{}", name),
    }
}

/// A request or response type. A message named like one of the generic
/// parameters of generated items (`H` of servers, `S` of request streams) is
/// named through `self::`, which a generic parameter cannot shadow.
pub(super) fn message_type(rust_type: &str) -> Result<syn::Type, String> {
    let path = match rust_type {
        "H" | "S" => format!("self::{rust_type}"),
        _ => rust_type.to_owned(),
    };
    syn::parse_str(&path)
        .map_err(|error| format!("cannot parse the Rust type `{rust_type}`: {error}"))
}

/// Formats emitted tokens as a file (deterministic: prettyplease has no
/// configuration that varies between machines).
pub(crate) fn format(tokens: TokenStream) -> Result<String, String> {
    let file: syn::File =
        syn::parse2(tokens).map_err(|error| format!("emitted code does not parse: {error}"))?;
    Ok(prettyplease::unparse(&file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MessageRef, MethodDef, MethodOptions, RpcKind};

    fn def() -> ServiceDef {
        let message = |rust: &str, proto: &str| MessageRef {
            rust_type: rust.into(),
            proto_name: proto.into(),
            fingerprint: 7,
        };
        ServiceDef {
            proto_name: "Greeter".into(),
            full_name: "hello.Greeter".into(),
            base: "Greeter".into(),
            module: "greeter_service".into(),
            docs: vec![" Says hello.".into()],
            fingerprint: 42,
            events: false,
            methods: vec![
                MethodDef {
                    proto_name: "Greet".into(),
                    rust_name: "greet".into(),
                    rust_name_with: "greet_with".into(),
                    message_name: "greeter.greet".into(),
                    const_name: "GREET".into(),
                    variant: "Greet".into(),
                    docs: vec![],
                    request: message("GreetRequest", "hello.GreetRequest"),
                    response: message("GreetReply", "hello.GreetReply"),
                    options: MethodOptions {
                        timeout_ms: Some(250),
                        retries: Some(2),
                        idempotent: true,
                        one_way: false,
                    },
                    kind: RpcKind::Unary,
                },
                MethodDef {
                    proto_name: "Type".into(),
                    rust_name: "r#type".into(),
                    rust_name_with: "type_with".into(),
                    message_name: "greeter.type".into(),
                    const_name: "TYPE".into(),
                    variant: "Type".into(),
                    docs: vec![],
                    request: message("()", "google.protobuf.Empty"),
                    response: message("super::common::Kind", "common.Kind"),
                    options: MethodOptions::default(),
                    kind: RpcKind::ServerStreaming,
                },
            ],
        }
    }

    fn options() -> EmitOptions {
        EmitOptions {
            client: true,
            server: true,
            runtime: syn::parse_str("::workerbus").unwrap(),
        }
    }

    fn emit(client: bool, server: bool) -> String {
        let options = EmitOptions {
            client,
            server,
            runtime: syn::parse_str("::workerbus").unwrap(),
        };
        format(service(&def(), &options).unwrap()).unwrap()
    }

    #[test]
    fn emits_every_part_from_a_hand_built_description() {
        let code = emit(true, true);
        for expected in [
            "pub mod greeter_service",
            "pub const GREET: &str = \"greeter.greet\";",
            "pub struct GreeterClient",
            "pub async fn greet(",
            "request: GreetRequest,",
            "pub async fn greet_with(",
            ".timeout_ms(250u64)",
            ".retries(2u32)",
            ".idempotent()",
            "pub async fn r#type(",
            "request: (),",
            "pub async fn type_with(",
            "::workerbus::__codegen::Streaming<super::common::Kind>,",
            "responses: ::workerbus::__codegen::StreamSender<super::common::Kind>,",
            "let responses = streams.sender::<super::common::Kind>(&cx)?;",
            "pub trait GreeterHandler",
            "fn r#type(",
            "pub struct GreeterServer<H>",
            "greeter_service::TYPE => {",
            "/// Says hello.",
            "/// Message name: `greeter.greet`. Defaults: timeout 250 ms, 2 retries, idempotent.",
        ] {
            assert!(code.contains(expected), "missing {expected:?} in:\n{code}");
        }
    }

    #[test]
    fn an_events_service_gets_an_emitter_and_an_event_stream_only() {
        let mut def = def();
        def.proto_name = "GreeterEvents".into();
        def.base = "Greeter".into();
        def.events = true;
        def.methods.truncate(1);
        def.methods[0].options = MethodOptions::default();
        def.methods[0].kind = RpcKind::OneWay;
        let options = EmitOptions {
            client: true,
            server: true,
            runtime: syn::parse_str("::workerbus").unwrap(),
        };
        let code = format(service(&def, &options).unwrap()).unwrap();
        for expected in [
            "pub struct GreeterEmitter",
            "pub async fn greet(",
            "event: GreetRequest,",
            "pub enum GreeterEvent",
            "Greet(GreetRequest),",
            "pub struct GreeterEvents",
            "pub fn subscribe(",
        ] {
            assert!(code.contains(expected), "missing {expected:?} in:\n{code}");
        }
        for unexpected in [
            "GreeterEventsClient",
            "GreeterEventsHandler",
            "GreeterEventsServer",
        ] {
            assert!(!code.contains(unexpected), "{unexpected:?} in:\n{code}");
        }
    }

    #[test]
    fn an_empty_service_binds_nothing_it_does_not_read() {
        let mut def = def();
        def.methods.clear();
        let code = format(service(&def, &options()).unwrap()).unwrap();
        assert!(
            code.contains("let (_, cx, _) = call.into_parts();"),
            "{code}"
        );
        assert!(!code.contains("let handler"), "{code}");
        assert!(!code.contains("match cx.method()"), "{code}");

        // Only streams: no payload to read.
        let mut def = self::def();
        def.methods.remove(0);
        def.methods[0].kind = RpcKind::BidiStreaming;
        let code = format(service(&def, &options()).unwrap()).unwrap();
        assert!(
            code.contains("let (_, cx, streams) = call.into_parts();"),
            "{code}"
        );

        // No streams.
        let mut def = self::def();
        def.methods.truncate(1);
        let code = format(service(&def, &options()).unwrap()).unwrap();
        assert!(
            code.contains("let (payload, cx, _) = call.into_parts();"),
            "{code}"
        );
    }

    #[test]
    fn an_events_service_without_events_never_reads_its_sink() {
        let mut def = def();
        def.events = true;
        def.methods.clear();
        let code = format(service(&def, &options()).unwrap()).unwrap();
        assert!(
            code.contains("_sink: ::workerbus::__codegen::EventSink"),
            "{code}"
        );
        assert!(!code.contains("match method.as_str()"), "{code}");
    }

    #[test]
    fn handlers_are_called_by_path() {
        let code = emit(false, true);
        assert!(
            code.contains("<H as GreeterHandler>::greet(&*handler, request, &cx)"),
            "{code}"
        );
    }

    #[test]
    fn messages_named_like_generic_parameters_are_named_through_self() {
        let mut def = def();
        def.methods[0].request.rust_type = "H".into();
        def.methods[0].response.rust_type = "S".into();
        def.methods[0].kind = RpcKind::ClientStreaming;
        let code = format(service(&def, &options()).unwrap()).unwrap();
        assert!(code.contains("Item = self::H"), "{code}");
        assert!(code.contains("incoming::<self::H>"), "{code}");
        assert!(code.contains("Result<self::S,"), "{code}");
    }

    #[test]
    fn conversion_names_allow_clippys_convention() {
        let mut def = def();
        def.methods[0].rust_name = "from_json".into();
        def.methods[0].rust_name_with = "from_json_with".into();
        let code = format(service(&def, &options()).unwrap()).unwrap();
        assert_eq!(
            code.matches("#[allow(clippy::wrong_self_convention)]")
                .count(),
            3,
            "{code}"
        );
    }

    #[test]
    fn client_and_server_can_be_left_out() {
        let code = emit(false, true);
        assert!(!code.contains("GreeterClient"));
        assert!(code.contains("GreeterServer"));
        let code = emit(true, false);
        assert!(code.contains("GreeterClient"));
        assert!(!code.contains("GreeterHandler"));
        assert!(code.contains("pub mod greeter_service"));
    }

    #[test]
    fn the_runtime_path_is_configurable() {
        let options = EmitOptions {
            client: true,
            server: true,
            runtime: syn::parse_str("crate::rt").unwrap(),
        };
        let code = format(service(&def(), &options).unwrap()).unwrap();
        assert!(code.contains("crate::rt::__codegen::Client"));
        assert!(!code.contains("::workerbus"));
    }
}
