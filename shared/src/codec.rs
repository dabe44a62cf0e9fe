//! The gRPC codec for Konnectivity packets: prost encoding with small
//! initial buffers. tonic allocates one encode and one decode buffer per
//! stream up front (8 KiB each by default); kube-apiserver opens one HTTP/2
//! connection and one stream per proxied connection, so on a server with
//! thousands of idle connections those buffers are most of the memory.
//! Buffers still grow on demand for large messages.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial buffer per direction and stream.
const INITIAL_BUFFER: usize = 1024;
/// Encoded bytes gathered before they are handed to HTTP/2.
const YIELD_THRESHOLD: usize = 32 * 1024;

pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }
}
