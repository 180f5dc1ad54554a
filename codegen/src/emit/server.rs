//! `<Svc>Handler`, the trait a worker implements, and `<Svc>Server<H>`,
//! which dispatches incoming calls to it.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{ident, message_type, method_lints};
use crate::model::{RpcKind, ServiceDef};

pub(super) fn server(def: &ServiceDef, cg: &TokenStream) -> Result<TokenStream, String> {
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
        docs.push(format!(
            " Message name: `{}`.{}",
            method.message_name,
            handler_note(method.kind)
        ));
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
                ::core::result::Result::Ok(#cg::Payload::new())
            }
        } else if method.response.rust_type == "()" {
            quote! {
                #call;
                ::core::result::Result::Ok(#cg::Payload::new())
            }
        } else {
            quote! {
                let response = #call;
                ::core::result::Result::Ok(#cg::respond(response))
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
    let server_docs = [
        format!(
            " Serves a [`{handler}`]: pass it to a driver (`ThreadDriver::spawn`) or to a serve function."
        ),
        String::new(),
        " One worker serves several services through `Services::new(..).add(..)`.".into(),
        " Cheap to clone: clones share the handler.".into(),
    ];
    Ok(quote! {
        #(#[doc = #handler_docs])*
        pub trait #handler: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*
        }

        #(#[doc = #server_docs])*
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

            /// The handler this server dispatches to.
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
            ) -> impl ::core::future::Future<Output = ::core::result::Result<#cg::Payload, #cg::Status>>
                   + ::core::marker::Send
                   + 'static
                   + use<H> {
                #body
            }
        }
    })
}

/// What a handler of the method's kind reads, sends and returns, for its
/// rustdoc.
fn handler_note(kind: RpcKind) -> &'static str {
    match kind {
        RpcKind::Unary => "",
        RpcKind::ServerStreaming => {
            " Server streaming: send the responses with `responses`; the stream ends when this returns."
        }
        RpcKind::ClientStreaming => {
            " Client streaming: read the requests from `requests`; the response goes back when this returns."
        }
        RpcKind::BidiStreaming => {
            " Bidirectional streaming: read the requests from `requests` and send the responses with `responses`; the stream ends when this returns."
        }
        RpcKind::OneWay => {
            " One-way: the caller does not wait, and nothing is sent back; an `Err` is logged in the worker."
        }
    }
}
