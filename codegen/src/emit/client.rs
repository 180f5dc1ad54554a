//! `<Svc>Client`: a typed client over a `Channel`, a method and a `_with`
//! method (options for one call) per rpc.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{ident, message_type, method_lints};
use crate::model::{MethodDef, RpcKind, ServiceDef};

pub(super) fn client(def: &ServiceDef, cg: &TokenStream) -> Result<TokenStream, String> {
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
            /// The schema this client was generated from. A process driver
            /// that `serves` it refuses a worker built from another.
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
    // The argument, the result, and the runtime's function, by kind.
    let (generics, argument, bound, result, function) = match method.kind {
        RpcKind::Unary => (
            quote!(),
            quote!(request: #request),
            quote!(),
            quote!(#response),
            quote!(unary),
        ),
        RpcKind::ServerStreaming => (
            quote!(),
            quote!(request: #request),
            quote!(),
            quote!(#cg::Streaming<#response>),
            quote!(server_stream),
        ),
        RpcKind::ClientStreaming => (
            quote!(<S>),
            quote!(requests: S),
            quote!(where S: #cg::Stream<Item = #request> + ::core::marker::Send + 'static),
            quote!(#response),
            quote!(client_stream),
        ),
        RpcKind::BidiStreaming => (
            quote!(<S>),
            quote!(requests: S),
            quote!(where S: #cg::Stream<Item = #request> + ::core::marker::Send + 'static),
            quote!(#cg::Streaming<#response>),
            quote!(bidi_stream),
        ),
        RpcKind::OneWay => (
            quote!(),
            quote!(request: #request),
            quote!(),
            quote!(()),
            quote!(one_way),
        ),
    };
    let forwarded = if method.kind.streams_requests() {
        quote!(requests)
    } else {
        quote!(request)
    };
    // The plain method calls the runtime itself, with no options: through
    // the `_with` method, every call would hold an empty `CallOptions` in a
    // future one level deeper.
    let plain_call =
        quote!(self.inner.#function(&METHOD, #forwarded, ::core::option::Option::None).await);
    let with_call = quote!(self.inner.#function(&METHOD, #forwarded, ::core::option::Option::Some(&options)).await);
    let lints = method_lints(&method.rust_name);
    Ok(quote! {
        #(#[doc = #docs])*
        #lints
        pub async fn #name #generics(&self, #argument) -> ::core::result::Result<#result, #cg::Error> #bound {
            static METHOD: #cg::MethodDesc = #desc;
            #plain_call
        }

        #[doc = #with_doc]
        #lints
        pub async fn #name_with #generics(
            &self,
            #argument,
            options: #cg::CallOptions,
        ) -> ::core::result::Result<#result, #cg::Error> #bound {
            static METHOD: #cg::MethodDesc = #desc;
            #with_call
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
    format!("{}{defaults}", kind_note(method.kind))
}

/// What a call of the method's kind sends and returns, for its rustdoc.
fn kind_note(kind: RpcKind) -> &'static str {
    match kind {
        RpcKind::Unary => "",
        RpcKind::ServerStreaming => {
            " Server streaming: returns the responses as a `Streaming`, read with `message()`."
        }
        RpcKind::ClientStreaming => {
            " Client streaming: sends the items of `requests`, and returns the one response."
        }
        RpcKind::BidiStreaming => {
            " Bidirectional streaming: sends the items of `requests` from a task of its own, and returns the responses as a `Streaming`."
        }
        RpcKind::OneWay => {
            " One-way: returns once the message is queued for the worker, which answers nothing."
        }
    }
}
