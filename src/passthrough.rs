//! The half of a socket wrapper that it does not watch: a wrapper that only
//! watches its reads hands every `AsyncWrite` call straight to the wrapped
//! stream, vectored writes included, and one that only works on its writes
//! hands reads through, so the wrapper costs nothing that way.

/// `write_through!([T] Wrapper<T>, field)` implements `AsyncWrite` for
/// `Wrapper<T>` by handing every call to `self.field` (`[]` when the wrapper
/// has no type parameter). The field must be `Unpin`.
macro_rules! write_through {
    ([$($g:ident)?] $ty:ty, $field:ident) => {
        impl<$($g: ::tokio::io::AsyncWrite + Unpin)?> ::tokio::io::AsyncWrite for $ty {
            fn poll_write(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                b: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                ::tokio::io::AsyncWrite::poll_write(::std::pin::Pin::new(&mut self.$field), cx, b)
            }
            fn poll_flush(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::tokio::io::AsyncWrite::poll_flush(::std::pin::Pin::new(&mut self.$field), cx)
            }
            fn poll_shutdown(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::tokio::io::AsyncWrite::poll_shutdown(::std::pin::Pin::new(&mut self.$field), cx)
            }
            fn poll_write_vectored(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                let io = ::std::pin::Pin::new(&mut self.$field);
                ::tokio::io::AsyncWrite::poll_write_vectored(io, cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                ::tokio::io::AsyncWrite::is_write_vectored(&self.$field)
            }
        }
    };
}

/// `read_through!([T] Wrapper<T>, field)` implements `AsyncRead` for
/// `Wrapper<T>` by handing every read to `self.field` (a name, or `0` for a
/// tuple struct). The field must be `Unpin`.
macro_rules! read_through {
    ([$($g:ident)?] $ty:ty, $field:tt) => {
        impl<$($g: ::tokio::io::AsyncRead + Unpin)?> ::tokio::io::AsyncRead for $ty {
            fn poll_read(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &mut ::tokio::io::ReadBuf<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                ::tokio::io::AsyncRead::poll_read(::std::pin::Pin::new(&mut self.$field), cx, buf)
            }
        }
    };
}

pub(crate) use {read_through, write_through};
