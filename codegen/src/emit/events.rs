//! An events service's items: `<Base>Emitter`, with which a worker sends
//! its events, and `<Base>Event` / `<Base>Events`, the typed stream a host
//! reads them from.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{ident, message_type, method_lints};
use crate::model::ServiceDef;

/// `<Svc>Emitter`: how a worker sends the events of an events service.
pub(super) fn emitter(def: &ServiceDef, cg: &TokenStream) -> Result<TokenStream, String> {
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
pub(super) fn event_stream(def: &ServiceDef, cg: &TokenStream) -> Result<TokenStream, String> {
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
