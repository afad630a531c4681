//! prost's codec with small buffers. tonic gives every call an encode buffer of
//! 8 KiB that lives as long as the call: for a `Subscribe` stream that idles for
//! hours, that buffer alone would be four WebSocket subscribers' worth of memory.
//! Starting at 512 bytes (it grows for a busy stream) keeps an idle gRPC stream
//! small; the yield threshold stays tonic's.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// First size of a call's encode and decode buffers.
const BUFFER: usize = 512;
/// Encoded bytes after which a stream hands what it has to HTTP/2 (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The codec `build.rs` names for every `herald.v1` method (`codec_path`).
#[derive(Debug, Clone, Copy)]
pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}
