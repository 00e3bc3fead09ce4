//! The `#[task]` attribute of `kairos-plugin-sdk`. Use it as `#[kairos_plugin_sdk::task]`: the
//! SDK's documentation describes it, and the code it generates calls the SDK.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Path, PathArguments, ReturnType, Type};

/// Exports the function as the plugin's `run`: the host calls it once per attempt.
///
/// ```rust,ignore
/// #[kairos_plugin_sdk::task]
/// fn run(task: kairos_plugin_sdk::Task<Payload>) -> anyhow::Result<kairos_plugin_sdk::Outcome> {
///     Ok(kairos_plugin_sdk::Outcome::with_output(format!("hello {}", task.payload.name)))
/// }
/// ```
///
/// The function takes one `Task<P>` (`P: serde::de::DeserializeOwned`, the payload is parsed
/// before the call; a payload that does not parse is a permanent error) and returns
/// `Result<Outcome, E>` or `Result<(), E>` for any `E: Into<anyhow::Error>` (`anyhow::Error`,
/// the SDK's `TaskError`, any `std::error::Error + Send + Sync + 'static`).
///
/// `#[task(crate = "path")]` names the SDK when it is not a dependency called
/// `kairos_plugin_sdk` (a renamed dependency, a re-export).
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut krate: Option<Path> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            let value: LitStr = meta.value()?.parse()?;
            krate = Some(value.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown option: the only one is `crate = \"path::to::sdk\"`"))
        }
    });
    syn::parse_macro_input!(attr with parser);
    let function = syn::parse_macro_input!(item as ItemFn);
    let krate = krate.unwrap_or_else(|| syn::parse_quote!(::kairos_plugin_sdk));
    match expand(&krate, &function) {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            let error = error.to_compile_error();
            // The function stays, so its own errors are reported too.
            quote!(#function #error).into()
        }
    }
}

fn expand(krate: &Path, function: &ItemFn) -> syn::Result<TokenStream2> {
    let takes = check(function)?;
    let name = &function.sig.ident;
    // The argument and return types are named in the call, so a type the SDK does not accept
    // is reported on the function's signature.
    let returns = match &function.sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    let call = quote!(#krate::__private::run_fn::<#takes, #returns>(kairos_task, #name));
    Ok(quote! {
        #function

        const _: () = {
            struct KairosTaskExport;

            impl #krate::__private::Guest for KairosTaskExport {
                // Not `task`: the plugin's function may be called that.
                fn run(
                    kairos_task: #krate::__private::bindings::Task,
                ) -> ::core::result::Result<
                    #krate::__private::bindings::Outcome,
                    #krate::__private::bindings::TaskError,
                > {
                    #call
                }
            }

            #krate::__private::bindings::__export_task_plugin!(
                KairosTaskExport with_types_in #krate::__private::bindings
            );
        };
    })
}

/// A plain function of one `Task<P>`: the errors name what to change. Returns the argument's
/// type.
fn check(function: &ItemFn) -> syn::Result<&Type> {
    let sig = &function.sig;
    if let Some(token) = &sig.asyncness {
        return Err(syn::Error::new(
            token.span(),
            "#[task] functions cannot be async: the host calls `run` synchronously",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "#[task] functions cannot be generic",
        ));
    }
    let mut inputs = sig.inputs.iter();
    let (Some(input), None) = (inputs.next(), inputs.next()) else {
        return Err(syn::Error::new(
            if sig.inputs.is_empty() {
                sig.ident.span()
            } else {
                sig.inputs.span()
            },
            "#[task] functions take exactly one argument: `task: Task<Payload>`",
        ));
    };
    let ty = match input {
        FnArg::Receiver(receiver) => {
            return Err(syn::Error::new(
                receiver.span(),
                "#[task] goes on a free function, not a method",
            ));
        }
        FnArg::Typed(typed) => &typed.ty,
    };
    if let Type::Path(path) = &**ty
        && path.qself.is_none()
        && let Some(last) = path.path.segments.last()
        && last.ident == "Task"
        && matches!(last.arguments, PathArguments::None)
    {
        return Err(syn::Error::new(
            ty.span(),
            "name the payload type: `Task<MyPayload>` (any `serde::Deserialize` type), or \
             `Task<serde_json::Value>` for any JSON; the payload is parsed before the call",
        ));
    }
    Ok(ty)
}
