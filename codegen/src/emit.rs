//! The emitter: a [`ServiceDef`] in, Rust tokens out.
//!
//! For a service `Embedder` it emits:
//!
//! - `embedder_service`: a module with the message-name constants
//!   (`EMBED = "embedder.embed"`) and the service's `SCHEMA`;
//! - `EmbedderClient`: a typed client over a `Channel`;
//! - `EmbedderHandler`: the trait a worker implements, with native `async fn`s;
//! - `EmbedderServer<H>`: dispatches incoming calls to a handler.
//!
//! Generated code reaches the runtime only through `<runtime>::__codegen`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::model::{MethodDef, RpcKind, ServiceDef};

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
        quote! {
            #cg::method_schema(#name, (#request, #request_fp), (#response, #response_fp), #cg::MethodKind::#kind)
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

fn client(def: &ServiceDef, cg: &TokenStream) -> Result<TokenStream, String> {
    let client = format_ident!("{}Client", def.base);
    let module = ident(&def.module);
    let mut docs = vec![
        format!(" Client of the `{}` service.", def.full_name),
        String::new(),
        " Cheap to clone; clones share the channel. Each method sends one call and".into(),
        " waits for its answer, its timeout, or its worker's exit.".into(),
    ];
    if !def.docs.is_empty() {
        docs.push(String::new());
        docs.extend(def.docs.iter().cloned());
    }
    let methods = def
        .methods
        .iter()
        .map(|method| client_method(method, cg))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(quote! {
        #(#[doc = #docs])*
        #[derive(Clone, Debug)]
        pub struct #client {
            inner: #cg::Client,
        }

        impl #client {
            /// The schema this client was generated from.
            pub const SCHEMA: #cg::ServiceSchema = #module::SCHEMA;

            /// A client that calls the worker at the other end of `channel`.
            pub fn new(channel: #cg::Channel) -> Self {
                Self { inner: #cg::Client::new(channel) }
            }

            /// Sets options for every call through this client. A call's own
            /// options (the `*_with` methods) still take precedence; unset
            /// fields fall back to the schema's defaults.
            #[must_use]
            pub fn with_options(self, options: #cg::CallOptions) -> Self {
                Self { inner: self.inner.with_options(options) }
            }

            /// The channel this client calls through.
            pub fn channel(&self) -> &#cg::Channel {
                self.inner.channel()
            }

            #(#methods)*
        }
    })
}

fn client_method(method: &MethodDef, cg: &TokenStream) -> Result<TokenStream, String> {
    let name = ident(&method.rust_name);
    let name_with = ident(&method.rust_name_with);
    let request = message_type(&method.request.rust_type)?;
    let response = message_type(&method.response.rust_type)?;
    let message_name = &method.message_name;
    let response_proto = &method.response.proto_name;
    let mut desc = quote!(#cg::MethodDesc::new(#message_name, #response_proto));
    if let Some(timeout_ms) = method.options.timeout_ms {
        desc = quote!(#desc.timeout_ms(#timeout_ms));
    }
    if let Some(retries) = method.options.retries {
        desc = quote!(#desc.retries(#retries));
    }
    if method.options.idempotent {
        desc = quote!(#desc.idempotent());
    }
    let mut docs = method.docs.clone();
    if !docs.is_empty() {
        docs.push(String::new());
    }
    docs.push(format!(
        " Message name: `{message_name}`.{}",
        defaults_note(method)
    ));
    let with_doc = format!(
        " [`{}`](Self::{}) with options for this call only.",
        method.rust_name.trim_start_matches("r#"),
        method.rust_name.trim_start_matches("r#")
    );
    let options = quote!(::core::option::Option::Some(&options));
    // The argument, the result, and the runtime call, by kind.
    let (generics, argument, bound, result, call) = match method.kind {
        RpcKind::Unary => (
            quote!(),
            quote!(request: #request),
            quote!(),
            quote!(#response),
            quote!(self.inner.unary(&METHOD, request, #options).await),
        ),
        RpcKind::ServerStreaming => (
            quote!(),
            quote!(request: #request),
            quote!(),
            quote!(#cg::Streaming<#response>),
            quote!(self.inner.server_stream(&METHOD, request, #options).await),
        ),
        RpcKind::ClientStreaming => (
            quote!(<S>),
            quote!(requests: S),
            quote!(where S: #cg::Stream<Item = #request> + ::core::marker::Send + 'static),
            quote!(#response),
            quote!(self.inner.client_stream(&METHOD, requests, #options).await),
        ),
        RpcKind::BidiStreaming => (
            quote!(<S>),
            quote!(requests: S),
            quote!(where S: #cg::Stream<Item = #request> + ::core::marker::Send + 'static),
            quote!(#cg::Streaming<#response>),
            quote!(self.inner.bidi_stream(&METHOD, requests, #options).await),
        ),
        RpcKind::OneWay => (
            quote!(),
            quote!(request: #request),
            quote!(),
            quote!(()),
            quote!(self.inner.one_way(&METHOD, request, #options).await),
        ),
    };
    let forwarded = if method.kind.streams_requests() {
        quote!(requests)
    } else {
        quote!(request)
    };
    let lints = method_lints(&method.rust_name);
    Ok(quote! {
        #(#[doc = #docs])*
        #lints
        pub async fn #name #generics(&self, #argument) -> ::core::result::Result<#result, #cg::Error> #bound {
            self.#name_with(#forwarded, #cg::CallOptions::new()).await
        }

        #[doc = #with_doc]
        #lints
        pub async fn #name_with #generics(
            &self,
            #argument,
            options: #cg::CallOptions,
        ) -> ::core::result::Result<#result, #cg::Error> #bound {
            static METHOD: #cg::MethodDesc = #desc;
            #call
        }
    })
}

/// The schema's call defaults in words, for the method's rustdoc.
fn defaults_note(method: &MethodDef) -> String {
    let options = &method.options;
    let mut parts = Vec::new();
    if let Some(timeout_ms) = options.timeout_ms {
        parts.push(format!("timeout {timeout_ms} ms"));
    }
    if let Some(retries) = options.retries {
        parts.push(format!(
            "{retries} {}",
            if retries == 1 { "retry" } else { "retries" }
        ));
    }
    if options.idempotent {
        parts.push("idempotent".to_owned());
    }
    let defaults = if parts.is_empty() {
        String::new()
    } else {
        format!(" Defaults: {}.", parts.join(", "))
    };
    if method.kind == RpcKind::OneWay {
        format!(
            " One-way: returns once the message is queued for the worker, which answers nothing.{defaults}"
        )
    } else {
        defaults
    }
}

/// `<Svc>Emitter`: how a worker sends the events of an events service.
fn emitter(def: &ServiceDef, cg: &TokenStream) -> Result<TokenStream, String> {
    let emitter = format_ident!("{}Emitter", def.base);
    let mut docs = vec![
        format!(" Sends the events of `{}` to the host.", def.full_name),
        String::new(),
        " Make one from a handler's context (`from_context`); it may be cloned and".into(),
        " kept beyond the call. Each method waits until the host has room for the".into(),
        " event, and fails with `Unavailable` once the host is gone.".into(),
    ];
    if !def.docs.is_empty() {
        docs.push(String::new());
        docs.extend(def.docs.iter().cloned());
    }
    let mut methods = Vec::new();
    for method in &def.methods {
        let name = ident(&method.rust_name);
        let event = message_type(&method.request.rust_type)?;
        let message_name = &method.message_name;
        let mut method_docs = method.docs.clone();
        if !method_docs.is_empty() {
            method_docs.push(String::new());
        }
        method_docs.push(format!(" Message name: `{message_name}`."));
        let lints = method_lints(&method.rust_name);
        methods.push(quote! {
            #(#[doc = #method_docs])*
            #lints
            pub async fn #name(&self, event: #event) -> ::core::result::Result<(), #cg::Status> {
                static METHOD: #cg::MethodName = #cg::MethodName::from_static(#message_name);
                self.sink.send(&METHOD, #cg::encode(&event)).await
            }
        });
    }
    // An emitter of no events never reads its sink.
    let (sink, new) = if def.methods.is_empty() {
        (format_ident!("_sink"), quote!(Self { _sink: sink }))
    } else {
        (format_ident!("sink"), quote!(Self { sink }))
    };
    Ok(quote! {
        #(#[doc = #docs])*
        #[derive(Clone, Debug)]
        pub struct #emitter {
            #sink: #cg::EventSink,
        }

        impl #emitter {
            /// An emitter sending through `sink`.
            pub fn new(sink: #cg::EventSink) -> Self {
                #new
            }

            /// An emitter sending to the host of the connection `cx`'s call
            /// came on.
            pub fn from_context(cx: &#cg::Context) -> Self {
                Self { #sink: cx.events() }
            }

            #(#methods)*
        }
    })
}

/// `<Svc>Event` and `<Svc>Events`: how a host receives the events of an
/// events service.
fn event_stream(def: &ServiceDef, cg: &TokenStream) -> Result<TokenStream, String> {
    let event = format_ident!("{}Event", def.base);
    let events = format_ident!("{}Events", def.base);
    let module = ident(&def.module);
    let mut variants = Vec::new();
    let mut arms = Vec::new();
    for method in &def.methods {
        let variant = ident(&method.variant);
        let message = message_type(&method.request.rust_type)?;
        let constant = format_ident!("{}", method.const_name);
        let proto = &method.request.proto_name;
        let mut docs = method.docs.clone();
        if !docs.is_empty() {
            docs.push(String::new());
        }
        docs.push(format!(" Message name: `{}`.", method.message_name));
        variants.push(quote! {
            #(#[doc = #docs])*
            #variant(#message),
        });
        arms.push(quote! {
            #module::#constant => #cg::decode_event::<#message>(method, payload, #proto).map(#event::#variant),
        });
    }
    // An events service without events matches nothing.
    let decode = if arms.is_empty() {
        quote! {
            |(method, _payload)| ::core::result::Result::Err(#cg::unexpected_event(method, &#module::SCHEMA))
        }
    } else {
        quote! {
            |(method, payload)| match method.as_str() {
                #(#arms)*
                _ => ::core::result::Result::Err(#cg::unexpected_event(method, &#module::SCHEMA)),
            }
        }
    };
    let event_doc = format!(" An event of `{}`.", def.full_name);
    let events_docs = [
        format!(
            " The events of `{}` a worker sends, as a stream.",
            def.full_name
        ),
        String::new(),
        " Subscribe before the worker sends: events nobody subscribed to are dropped.".into(),
        " Read it: the worker waits while its host holds a window of unread events.".into(),
        " It ends when the worker is gone for good (a supervised worker: when its".into(),
        " supervisor gives it up).".into(),
    ];
    Ok(quote! {
        #[doc = #event_doc]
        #[derive(Clone, Debug, PartialEq)]
        pub enum #event {
            #(#variants)*
        }

        #(#[doc = #events_docs])*
        #[derive(Debug)]
        pub struct #events {
            inner: #cg::Subscription,
        }

        impl #events {
            /// Subscribes to the events the worker at the other end of
            /// `channel` sends.
            pub fn subscribe(channel: &#cg::Channel) -> Self {
                Self { inner: #cg::subscribe(channel, &#module::SCHEMA) }
            }

            /// The next event, `None` once the worker is gone for good.
            pub async fn next_event(&mut self) -> ::core::option::Option<::core::result::Result<#event, #cg::Error>> {
                ::core::future::poll_fn(|cx| #cg::Stream::poll_next(::core::pin::Pin::new(&mut *self), cx)).await
            }
        }

        impl #cg::Stream for #events {
            type Item = ::core::result::Result<#event, #cg::Error>;

            fn poll_next(
                mut self: ::core::pin::Pin<&mut Self>,
                cx: &mut ::core::task::Context<'_>,
            ) -> ::core::task::Poll<::core::option::Option<Self::Item>> {
                self.inner.poll_event(cx).map(|event| {
                    event.map(#decode)
                })
            }
        }
    })
}

fn server(def: &ServiceDef, cg: &TokenStream) -> Result<TokenStream, String> {
    let handler = format_ident!("{}Handler", def.base);
    let server = format_ident!("{}Server", def.base);
    let module = ident(&def.module);
    let mut handler_docs = vec![
        format!(
            " The handler of the `{}` service: implement it in the worker",
            def.full_name
        ),
        format!(" and serve it with [`{server}`]."),
    ];
    if !def.docs.is_empty() {
        handler_docs.push(String::new());
        handler_docs.extend(def.docs.iter().cloned());
    }
    let mut trait_methods = Vec::new();
    let mut arms = Vec::new();
    for method in &def.methods {
        let name = ident(&method.rust_name);
        let request = message_type(&method.request.rust_type)?;
        let response = message_type(&method.response.rust_type)?;
        let mut docs = method.docs.clone();
        if !docs.is_empty() {
            docs.push(String::new());
        }
        docs.push(format!(" Message name: `{}`.", method.message_name));
        let (arguments, output) = match method.kind {
            RpcKind::Unary | RpcKind::OneWay => (quote!(request: #request,), quote!(#response)),
            RpcKind::ServerStreaming => (
                quote!(request: #request, responses: #cg::StreamSender<#response>,),
                quote!(()),
            ),
            RpcKind::ClientStreaming => (
                quote!(requests: #cg::Incoming<#request>,),
                quote!(#response),
            ),
            RpcKind::BidiStreaming => (
                quote!(requests: #cg::Incoming<#request>, responses: #cg::StreamSender<#response>,),
                quote!(()),
            ),
        };
        let lints = method_lints(&method.rust_name);
        trait_methods.push(quote! {
            #(#[doc = #docs])*
            #lints
            fn #name(
                &self,
                #arguments
                cx: &#cg::Context,
            ) -> impl ::core::future::Future<Output = ::core::result::Result<#output, #cg::Status>> + ::core::marker::Send;
        });
        let constant = format_ident!("{}", method.const_name);
        let request_proto = &method.request.proto_name;
        // `Empty` maps to `()`; binding a unit value would trip clippy in the
        // user's crate, so unit requests and responses are not bound.
        let mut prepare = TokenStream::new();
        let mut arguments = TokenStream::new();
        if method.kind.streams_requests() {
            prepare
                .extend(quote!(let requests = streams.incoming::<#request>(&cx, #request_proto)?;));
            arguments.extend(quote!(requests,));
        } else {
            let decode = quote!(#cg::decode::<#request>(&cx, payload, #request_proto)?);
            if method.request.rust_type == "()" {
                prepare.extend(quote!(#decode;));
                arguments.extend(quote!((),));
            } else {
                prepare.extend(quote!(let request = #decode;));
                arguments.extend(quote!(request,));
            }
        }
        if method.kind.streams_responses() {
            prepare.extend(quote!(let responses = streams.sender::<#response>(&cx)?;));
            arguments.extend(quote!(responses,));
        }
        // A path call: a method call on the `Arc` could find one of its own
        // methods (an rpc `clone`) first.
        let call = quote!(<H as #handler>::#name(&*handler, #arguments &cx).await?);
        let finish = if method.kind.streams_responses() {
            // The stream's items went out as the handler sent them; an empty
            // RESPONSE ends the stream.
            quote! {
                #call;
                ::core::result::Result::Ok(#cg::Bytes::new())
            }
        } else if method.response.rust_type == "()" {
            quote! {
                #call;
                ::core::result::Result::Ok(#cg::encode(&()))
            }
        } else {
            quote! {
                let response = #call;
                ::core::result::Result::Ok(#cg::encode(&response))
            }
        };
        arms.push(quote! {
            #module::#constant => {
                #prepare
                #finish
            }
        });
    }
    // Bind only what some method reads: a service whose requests all stream
    // never reads the payload, one without streams never reads the streams,
    // and one without methods reads only the context.
    let payload = if def
        .methods
        .iter()
        .any(|method| !method.kind.streams_requests())
    {
        quote!(payload)
    } else {
        quote!(_)
    };
    let streams = if def
        .methods
        .iter()
        .any(|method| method.kind.streams_requests() || method.kind.streams_responses())
    {
        quote!(streams)
    } else {
        quote!(_)
    };
    let unimplemented =
        quote!(::core::result::Result::Err(#cg::unimplemented(&cx, &#module::SCHEMA)));
    let body = if def.methods.is_empty() {
        quote! {
            async move {
                let (_, cx, _) = call.into_parts();
                #unimplemented
            }
        }
    } else {
        quote! {
            let handler = ::std::sync::Arc::clone(&self.handler);
            async move {
                let (#payload, cx, #streams) = call.into_parts();
                match cx.method() {
                    #(#arms)*
                    _ => #unimplemented,
                }
            }
        }
    };
    let server_doc = format!(
        " Serves a [`{handler}`]: pass it to a driver (`ThreadDriver::spawn`) or to a serve function."
    );
    Ok(quote! {
        #(#[doc = #handler_docs])*
        pub trait #handler: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*
        }

        #[doc = #server_doc]
        pub struct #server<H> {
            handler: ::std::sync::Arc<H>,
        }

        impl<H: #handler> #server<H> {
            /// A server dispatching to `handler`.
            pub fn new(handler: H) -> Self {
                Self { handler: ::std::sync::Arc::new(handler) }
            }

            /// A server dispatching to a handler shared with other code.
            pub fn from_arc(handler: ::std::sync::Arc<H>) -> Self {
                Self { handler }
            }

            /// The handler.
            pub fn handler(&self) -> &::std::sync::Arc<H> {
                &self.handler
            }
        }

        impl<H> ::core::clone::Clone for #server<H> {
            fn clone(&self) -> Self {
                Self { handler: ::std::sync::Arc::clone(&self.handler) }
            }
        }

        impl<H> ::core::fmt::Debug for #server<H> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(::core::stringify!(#server)).finish_non_exhaustive()
            }
        }

        impl<H: #handler> #cg::Dispatch for #server<H> {
            fn schema(&self) -> &'static #cg::ServiceSchema {
                &#module::SCHEMA
            }

            fn dispatch(
                &self,
                call: #cg::Call,
            ) -> impl ::core::future::Future<Output = ::core::result::Result<#cg::Bytes, #cg::Status>>
                   + ::core::marker::Send
                   + 'static
                   + use<H> {
                #body
            }
        }
    })
}

/// Lints a method's name draws from Clippy in the user's crate: an rpc
/// `FromJson` is a method `from_json(&self, ..)`, which `wrong_self_convention`
/// expects to take no `self`.
fn method_lints(name: &str) -> TokenStream {
    let name = name.trim_start_matches("r#");
    if name.starts_with("from_") || name.starts_with("into_") {
        quote!(#[allow(clippy::wrong_self_convention)])
    } else {
        TokenStream::new()
    }
}

/// An identifier, raw if the name is a Rust keyword.
fn ident(name: &str) -> syn::Ident {
    match name.strip_prefix("r#") {
        Some(raw) => syn::Ident::new_raw(raw, proc_macro2::Span::call_site()),
        None => format_ident!("{}", name),
    }
}

/// A request or response type. A message named like one of the generic
/// parameters of generated items (`H` of servers, `S` of request streams) is
/// named through `self::`, which a generic parameter cannot shadow.
fn message_type(rust_type: &str) -> Result<syn::Type, String> {
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
    use crate::model::{MessageRef, MethodOptions};

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
