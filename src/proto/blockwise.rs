//! Block-wise transfer (RFC 7959), sans-IO: the Block1 / Block2 option codec, and the state
//! both session protocols share to move bodies larger than one message.
//!
//! Both roles, both directions:
//!
//! - **Server, Block1** (a request body in blocks): the blocks of one body are reassembled and
//!   the handler sees the request once, whole (an *atomic* PUT / POST, RFC 7959 §2.5). Every
//!   non-final block is answered 2.31 Continue echoing its Block1; a block that does not follow
//!   the last one (a gap, a reordering, a transfer whose first block never came) gets 4.08
//!   Request Entity Incomplete (§2.9.2); a body above the maximum body size gets 4.13 Request
//!   Entity Too Large with Size1 naming the maximum (§2.9.3).
//! - **Server, Block2** (a response body in blocks): a response larger than the block size
//!   goes out in blocks, each with the representation's ETag, the first with Size2 (§4). The
//!   representation is kept per (session, request key) so that the later blocks come from the
//!   same version; should it be gone (expired, evicted), the handler runs again, and since the
//!   ETag is a hash of the representation a changed one carries a different ETag: the client
//!   sees the change and never splices two versions. A client's Block2 in its request picks a
//!   smaller block size (early negotiation, §2.4).
//! - **Client, Block1**: a request body larger than the block size goes out in blocks, the
//!   first with Size1; a server's smaller SZX in its 2.31 (or in a 4.13 to the first block) is
//!   honoured for the blocks that follow.
//! - **Client, Block2**: a response with Block2 M=1 makes the core fetch the next block itself;
//!   one whole response is handed up. An ETag that changes mid-transfer restarts the transfer
//!   from block 0 once, then fails it.
//! - **Client, Block2 with Observe** (§3.4): a notification carries the first block; the rest
//!   is fetched by requests built on the registration, without Observe and under a token of
//!   their own (`Blockwise::notification_fetch`), and the whole is handed up as that
//!   notification, under the observation's token. The first response to a registration, when
//!   it comes in blocks, is completed the same way. The sessions drop the fetch of an older
//!   notification when a newer one arrives.
//!
//! - **BERT** (RFC 8323 §6, TCP / TLS only): when both CSMs offer it, a body that does not fit
//!   one message goes in BERT blocks (SZX 7: several 1024-byte blocks per message, NUM
//!   counting 1024-byte blocks) both ways, and SZX 7 is accepted; without that offer SZX 7
//!   stays reserved (4.00 to a request, a failed transfer for a response).
//!
//! Bounds (RFC 7959 §2.9 and the threat model): a body may not exceed
//! [`BlockwiseConfig::max_body_size`]; a session holds at most
//! [`MAX_TRANSFERS_PER_SESSION`] partial uploads and as many stored representations (the
//! oldest is dropped for a new one); and every byte a peer makes us hold counts against one
//! [`MemoryBudget`] shared by every session of the context. Past the budget a block is answered
//! 5.03 Service Unavailable with a Max-Age (RFC 7252 §5.9.3.4: try again later) and a
//! representation is simply not stored. An abandoned transfer expires EXCHANGE_LIFETIME (RFC
//! 7252 §4.8.2: 247 s with the default transmission parameters) after its last block: by then
//! the peer can no longer be retransmitting a block of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, Packet, ResponseType};

use crate::proto::wire::options::{BLOCK1, BLOCK2, ETAG, OBSERVE, SIZE1, SIZE2};
use crate::proto::wire::{decode_uint, encode_uint};

/// The largest SZX that denotes a block size (6: 1024 bytes). 7 is reserved in RFC 7959 and
/// means BERT over TCP / TLS (RFC 8323 §6).
pub const MAX_SZX: u8 = 6;
/// SZX 7: BERT over reliable transports, reserved otherwise.
pub const BERT_SZX: u8 = 7;
/// The default block size, 1024 bytes (SZX 6): the largest RFC 7959 allows, and one that
/// still fits a UDP datagram on any path with the IPv6 minimum MTU of 1280 bytes once the
/// header and options are added (RFC 7252 §4.6).
pub const DEFAULT_BLOCK_SIZE: usize = 1024;
/// The default maximum body size, 1 MiB: a firmware slice, a configuration or a log large
/// enough for real use (a 1 MB upload to `serve`'s `/echo` fits), yet one whose reassembly a
/// peer cannot use to make a server hold more than that per transfer.
pub const DEFAULT_MAX_BODY_SIZE: usize = 1 << 20;
/// The default budget for bytes held for peers (partial uploads and stored representations),
/// across every session of a context: 16 maximum-size bodies.
pub const DEFAULT_MEMORY_LIMIT: usize = 16 * DEFAULT_MAX_BODY_SIZE;
/// Partial uploads (and, separately, stored representations) one session may hold.
pub const MAX_TRANSFERS_PER_SESSION: usize = 4;
/// Max-Age of the 5.03 sent when the memory budget is exhausted: when to try again.
const RETRY_AFTER_SECS: u32 = 5;
/// The unit a BERT block carries a whole number of, and its NUM counts (RFC 8323 §6).
const BERT_UNIT: usize = 1024;

/// The value of a Block1 or Block2 option (RFC 7959 §2.2): the block number, whether more
/// blocks follow, and the size exponent (the block holds `2^(SZX + 4)` bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockValue {
    /// NUM: the block's number, 0 to 2^20 - 1.
    pub num: u32,
    /// M: more blocks follow (in a request's Block2 it is meaningless and sent as 0).
    pub more: bool,
    /// SZX: 0 (16 bytes) to 6 (1024 bytes); 7 is BERT over TCP / TLS.
    pub szx: u8,
}

/// Why a Block1 / Block2 option value cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockValueError {
    /// Longer than three bytes (§2.2: the value is 0 to 3 bytes).
    #[error("block option value of {0} bytes (at most 3)")]
    TooLong(usize),
}

impl BlockValue {
    /// Block `num` of size exponent `szx`, with M = `more`.
    pub fn new(num: u32, more: bool, szx: u8) -> Self {
        BlockValue { num, more, szx }
    }

    /// Reads an option value: a uint of 0 to 3 bytes, `NUM << 4 | M << 3 | SZX`.
    pub fn parse(bytes: &[u8]) -> Result<Self, BlockValueError> {
        if bytes.len() > 3 {
            return Err(BlockValueError::TooLong(bytes.len()));
        }
        let value = decode_uint(bytes).unwrap_or(0);
        Ok(BlockValue {
            num: value >> 4,
            more: value & 0x08 != 0,
            szx: (value & 0x07) as u8,
        })
    }

    /// The option value, in the shortest form (block 0, M = 0, SZX 0 is no bytes).
    pub fn encode(&self) -> Vec<u8> {
        let value =
            (self.num & 0x000F_FFFF) << 4 | u32::from(self.more) << 3 | u32::from(self.szx & 7);
        encode_uint(value)
    }

    /// Bytes in one block: `2^(SZX + 4)`; BERT's unit is 1024 bytes.
    pub fn size(&self) -> usize {
        block_size(self.szx)
    }

    /// Where the block starts in the body.
    pub fn offset(&self) -> usize {
        self.num as usize * self.size()
    }

    /// SZX 7: BERT (RFC 8323 §6), reserved over UDP / DTLS.
    pub fn is_bert(&self) -> bool {
        self.szx == BERT_SZX
    }
}

/// Bytes in a block of size exponent `szx` (BERT's unit, 1024, for 7).
pub fn block_size(szx: u8) -> usize {
    16 << szx.min(MAX_SZX)
}

/// The size exponent of the largest block no larger than `bytes` (0 below 32 bytes, at most
/// [`MAX_SZX`]).
pub fn szx_for(bytes: usize) -> u8 {
    let mut szx = 0;
    while szx < MAX_SZX && block_size(szx + 1) <= bytes {
        szx += 1;
    }
    szx
}

/// The ETag of a representation: a 64-bit FNV-1a hash of its Content-Format and body. Equal
/// representations get equal ETags whenever they are produced, so a server needs no state to
/// keep its blocks consistent, and a changed representation gets a different one (barring a
/// 2^-64 collision).
pub fn etag_of(content_format: Option<&[u8]>, body: &[u8]) -> [u8; 8] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(content_format.unwrap_or(&[0xff, 0xff, 0xff]));
    feed(body);
    hash.to_be_bytes()
}

/// Bytes held for peers across many sessions, against one limit. Cloning shares the count.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    used: Arc<AtomicUsize>,
    /// The most ever held at once: what a hostile peer managed to make us keep.
    peak: Arc<AtomicUsize>,
    limit: usize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            used: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most held at once since the budget was made (never above the limit).
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes `bytes` from the budget; false (and nothing taken) when that would exceed it.
    fn take(&self, bytes: usize) -> bool {
        match self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            }) {
            Ok(before) => {
                self.peak.fetch_max(before + bytes, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A body held against a [`MemoryBudget`]: its bytes go back to the budget when it is dropped,
/// however the transfer ends.
#[derive(Debug)]
struct Held {
    bytes: Vec<u8>,
    budget: MemoryBudget,
}

impl Held {
    fn new(budget: &MemoryBudget) -> Self {
        Held {
            bytes: Vec::new(),
            budget: budget.clone(),
        }
    }

    /// Appends `data`; false (nothing appended) when the budget cannot hold it.
    fn extend(&mut self, data: &[u8]) -> bool {
        if !self.budget.take(data.len()) {
            return false;
        }
        self.bytes.extend_from_slice(data);
        true
    }

    fn take(mut self) -> Vec<u8> {
        self.budget.give_back(self.bytes.len());
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes.len());
    }
}

/// The block-wise settings of a context, shared by its sessions.
#[derive(Debug, Clone)]
pub struct BlockwiseConfig {
    szx: u8,
    max_body_size: usize,
    budget: MemoryBudget,
}

impl Default for BlockwiseConfig {
    fn default() -> Self {
        BlockwiseConfig::new(
            DEFAULT_BLOCK_SIZE,
            DEFAULT_MAX_BODY_SIZE,
            DEFAULT_MEMORY_LIMIT,
        )
    }
}

impl BlockwiseConfig {
    /// Blocks of `block_size` bytes (rounded down to a power of two from 16 to 1024), bodies of
    /// at most `max_body_size` bytes both ways, and at most `memory_limit` bytes held for peers
    /// by all the sessions sharing this configuration.
    pub fn new(block_size: usize, max_body_size: usize, memory_limit: usize) -> Self {
        BlockwiseConfig {
            szx: szx_for(block_size),
            max_body_size,
            budget: MemoryBudget::new(memory_limit),
        }
    }

    /// The block size in bytes.
    pub fn block_size(&self) -> usize {
        block_size(self.szx)
    }

    /// The size exponent of the block size.
    pub fn szx(&self) -> u8 {
        self.szx
    }

    /// The largest body reassembled or fetched, in bytes.
    pub fn max_body_size(&self) -> usize {
        self.max_body_size
    }

    /// The budget shared by the sessions.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }
}

/// A session's block-wise settings, or the defaults when none were set.
pub(crate) fn config_or_default(config: &Option<Arc<BlockwiseConfig>>) -> &BlockwiseConfig {
    static DEFAULT: std::sync::OnceLock<BlockwiseConfig> = std::sync::OnceLock::new();
    config
        .as_deref()
        .unwrap_or_else(|| DEFAULT.get_or_init(BlockwiseConfig::default))
}

/// Why a block-wise transfer of ours failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockwiseError {
    /// The response body grew past the maximum body size.
    #[error("response body exceeds the maximum body size of {0} bytes")]
    TooLarge(usize),
    /// The representation changed mid-transfer (its ETag did), again after one restart.
    #[error("the representation changed during the block-wise transfer")]
    RepresentationChanged,
    /// A block did not follow the previous one, or used SZX 7 where BERT was not agreed.
    #[error("the peer sent a block out of sequence or of a reserved size")]
    BadBlock,
}

/// What a session does with a request once the block-wise layer saw it.
#[derive(Debug)]
pub(crate) enum ServerStep {
    /// Hand it to the application: the request as it came, or (`Some`) the whole request
    /// reassembled from its blocks.
    HandUp(Option<Packet>),
    /// Answer with this response (2.31, 4.08, 4.13, 5.03, or a stored block); type, Message
    /// ID and token are the session's business.
    Answer(Packet),
}

/// What a session does with a response to a request of ours.
#[derive(Debug)]
pub(crate) enum ClientStep {
    /// Hand this (whole) response up.
    Deliver(Packet),
    /// Send this request next (the next block), under the same token.
    Send(Packet),
    /// The transfer failed.
    Fail(BlockwiseError),
}

/// How large a message may be on the session's transport.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// A body up to this many bytes goes in one message, unsliced.
    pub whole: usize,
    /// The largest SZX an ordinary block may use.
    pub szx: u8,
    /// BERT (RFC 8323 §6) may be sent: the payload of one BERT block, a multiple of 1024
    /// bytes that fits one message to the peer. `None` over UDP / DTLS, or when the peer's
    /// CSM did not offer BERT.
    pub bert: Option<usize>,
    /// SZX 7 (BERT) may be received: BERT was offered both ways. Otherwise SZX 7 is reserved
    /// and refused (RFC 7959 §2.2).
    pub bert_in: bool,
}

impl Limits {
    /// The size exponent and the bytes per message of a body that must go in blocks, given
    /// the Block2 option of the request (if any) and our block size. BERT when it may be
    /// sent and either the request asks for it (SZX 7 in a request's Block2 is control usage:
    /// the client takes BERT blocks) or, with no such request, our block size is the largest
    /// (BERT extends 1024-byte blocks; a smaller configured size is kept as asked).
    fn shape(&self, config: &BlockwiseConfig, requested: Option<BlockValue>) -> (u8, usize) {
        let wants_bert = requested.map_or(config.szx == MAX_SZX, |b| b.is_bert());
        match self.bert.filter(|_| wants_bert) {
            Some(bytes) => (BERT_SZX, bytes),
            None => {
                let szx = requested
                    .map_or(MAX_SZX, |b| b.szx.min(MAX_SZX))
                    .min(self.szx)
                    .min(config.szx);
                (szx, block_size(szx))
            }
        }
    }
}

/// A Block1 body being received.
#[derive(Debug)]
struct Upload {
    key: Vec<u8>,
    body: Held,
    last: Instant,
}

/// A representation being served in blocks.
#[derive(Debug)]
struct Download {
    key: Vec<u8>,
    /// The response without its payload.
    head: Packet,
    body: Held,
    etag: [u8; 8],
    last: Instant,
}

/// A request of ours moving in blocks, one way or both.
#[derive(Debug)]
struct ClientTransfer {
    token: Vec<u8>,
    /// The request as the application made it, whole.
    request: Packet,
    /// Block1: bytes of the body the server has taken, the size of the block in flight, SZX.
    upload: Option<(usize, usize, u8)>,
    /// Block2: what arrived so far, and the ETag it came with.
    body: Vec<u8>,
    etag: Option<Vec<u8>>,
    /// The Observe option of the first block, for the whole response (§3.4).
    observe: Option<Vec<u8>>,
    restarted: bool,
    /// Bytes in one BERT block of the upload (a multiple of 1024), when it goes as BERT.
    bert: usize,
    /// The whole response, held while the closing request of a BERT download is answered
    /// (see [`closing_request`]).
    closing: Option<Packet>,
}

/// The block-wise state of one session: partial uploads and stored representations as a
/// server, transfers of its own requests as a client. Empty until a body needs blocks.
#[derive(Debug, Default)]
pub(crate) struct Blockwise {
    uploads: Vec<Upload>,
    downloads: Vec<Download>,
    client: Vec<ClientTransfer>,
}

impl Blockwise {
    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.uploads.is_empty() && self.downloads.is_empty() && self.client.is_empty()
    }

    /// When the oldest server-side transfer expires (EXCHANGE_LIFETIME after its last block).
    pub fn next_expiry(&self, lifetime: Duration) -> Option<Instant> {
        let uploads = self.uploads.iter().map(|u| u.last);
        let downloads = self.downloads.iter().map(|d| d.last);
        uploads.chain(downloads).min().map(|at| at + lifetime)
    }

    /// Forgets the server-side transfers abandoned for `lifetime`.
    pub fn expire(&mut self, now: Instant, lifetime: Duration) {
        self.uploads.retain(|u| u.last + lifetime > now);
        self.downloads.retain(|d| d.last + lifetime > now);
    }

    // ---- server ----

    /// A request from the peer (its options already checked): a Block1 block is reassembled
    /// or answered; a Block2 request for a later block is served from the stored
    /// representation when there is one; everything else is handed up.
    pub fn server_request(
        &mut self,
        config: &BlockwiseConfig,
        now: Instant,
        request: &Packet,
        limits: Limits,
    ) -> ServerStep {
        let block1 = block_option(request, BLOCK1);
        let block2 = block_option(request, BLOCK2);
        if [block1, block2]
            .iter()
            .flatten()
            .any(|b| b.is_bert() && !limits.bert_in)
        {
            // RFC 7959 §2.2: SZX 7 is reserved; only RFC 8323 BERT, when agreed, gives it a
            // meaning.
            return ServerStep::Answer(diagnostic(
                ResponseType::BadRequest,
                "SZX 7 (BERT) is reserved here",
            ));
        }
        if let Some(block) = block1 {
            return self.upload_block(config, now, request, block, limits);
        }
        if request.payload.len() > config.max_body_size {
            return ServerStep::Answer(too_large(config, Some(limits.szx)));
        }
        if let Some(block) = block2.filter(|b| b.num > 0) {
            let key = request_key(request);
            if let Some(at) = self.downloads.iter().position(|d| d.key == key) {
                self.downloads[at].last = now;
                let (szx, bytes) = limits.shape(config, Some(block));
                let download = &self.downloads[at];
                let offset = block.offset();
                let (answer, more) = slice(
                    &download.head,
                    &download.body.bytes,
                    download.etag,
                    offset,
                    (szx, bytes),
                );
                if !more {
                    // The client has the last block: the transfer is done.
                    self.downloads.remove(at);
                }
                let mut answer = answer;
                if request.get_first_option(CoapOption::Observe).is_none() {
                    // The representation was stored from a notification's first block: a
                    // response to a request without Observe is no notification (RFC 7641 §2:
                    // a stored response used for a normal GET loses its Observe option).
                    answer.clear_option(CoapOption::Observe);
                }
                return ServerStep::Answer(answer);
            }
        }
        ServerStep::HandUp(None)
    }

    fn upload_block(
        &mut self,
        config: &BlockwiseConfig,
        now: Instant,
        request: &Packet,
        block: BlockValue,
        limits: Limits,
    ) -> ServerStep {
        let key = request_key(request);
        let ours = config.szx.min(limits.szx);
        let announced = uint(request, SIZE1).unwrap_or(0) as usize;
        if announced > config.max_body_size {
            self.uploads.retain(|u| u.key != key);
            return ServerStep::Answer(too_large(config, Some(ours)));
        }
        let offset = block.offset();
        let payload = &request.payload;
        let full = if block.is_bert() {
            !payload.is_empty() && payload.len().is_multiple_of(1024)
        } else {
            payload.len() == block.size()
        };
        if block.more && !full {
            // §2.2: every block but the last carries exactly the block size.
            self.uploads.retain(|u| u.key != key);
            return ServerStep::Answer(diagnostic(
                ResponseType::BadRequest,
                "a non-final block must carry a whole block",
            ));
        }
        let at = if offset == 0 {
            // A first block starts (or restarts) the body.
            self.uploads.retain(|u| u.key != key);
            if self.uploads.len() >= MAX_TRANSFERS_PER_SESSION {
                self.uploads.remove(0);
            }
            self.uploads.push(Upload {
                key,
                body: Held::new(&config.budget),
                last: now,
            });
            self.uploads.len() - 1
        } else {
            match self.uploads.iter().position(|u| u.key == key) {
                Some(at) => at,
                None => return incomplete("no transfer of this body started"),
            }
        };
        let held = self.uploads[at].body.bytes.len();
        if offset != held {
            if offset + payload.len() == held && block.more {
                // The block before the one we wait for, again (its 2.31 was lost and the client
                // sent it anew with a new Message ID): answer it again, take nothing.
                return ServerStep::Answer(continue_block(offset, block, ours));
            }
            self.uploads.remove(at);
            return incomplete("block out of sequence");
        }
        if held + payload.len() > config.max_body_size {
            self.uploads.remove(at);
            return ServerStep::Answer(too_large(config, Some(ours)));
        }
        if !self.uploads[at].body.extend(payload) {
            self.uploads.remove(at);
            let mut answer = diagnostic(
                ResponseType::ServiceUnavailable,
                "too many block-wise transfers in progress",
            );
            answer.add_option(CoapOption::MaxAge, encode_uint(RETRY_AFTER_SECS));
            return ServerStep::Answer(answer);
        }
        self.uploads[at].last = now;
        if block.more {
            return ServerStep::Answer(continue_block(offset, block, ours));
        }
        let upload = self.uploads.remove(at);
        let mut whole = request.clone();
        whole.payload = upload.body.take();
        ServerStep::HandUp(Some(whole))
    }

    /// The application's response to `request`: echoes the final Block1, and goes out in
    /// blocks when its body does not fit one message or the request asked for a block.
    pub fn server_response(
        &mut self,
        config: &BlockwiseConfig,
        now: Instant,
        request: Option<&Packet>,
        mut response: Packet,
        limits: Limits,
    ) -> Packet {
        if let Some(block) = request.and_then(|r| block_option(r, BLOCK1)) {
            // §2.3: the response to the final block carries its Block1, M = 0.
            let echo = BlockValue::new(block.num, false, block.szx);
            set_option(&mut response, BLOCK1, echo.encode());
        }
        let requested = request.and_then(|r| block_option(r, BLOCK2));
        let len = response.payload.len();
        if requested.is_none() && len <= limits.whole {
            return response;
        }
        let (szx, bytes) = limits.shape(config, requested);
        let offset = requested.map_or(0, |b| b.offset());
        if requested.is_some() && len <= bytes && offset == 0 {
            let only = BlockValue::new(0, false, szx);
            set_option(&mut response, BLOCK2, only.encode());
            return response;
        }
        let body = std::mem::take(&mut response.payload);
        let etag = match response.get_first_option(CoapOption::ETag) {
            Some(tag) => {
                let mut fixed = [0u8; 8];
                let n = tag.len().min(8);
                fixed[..n].copy_from_slice(&tag[..n]);
                fixed
            }
            None => etag_of(
                response
                    .get_first_option(CoapOption::ContentFormat)
                    .map(Vec::as_slice),
                &body,
            ),
        };
        let (answer, more) = slice(&response, &body, etag, offset, (szx, bytes));
        // Without the request (a notification, a separate response) nothing is stored: the
        // later blocks are answered by the handler again.
        let Some(key) = request.map(request_key) else {
            return answer;
        };
        self.downloads.retain(|d| d.key != key);
        if more && is_success(&response) {
            let mut held = Held::new(&config.budget);
            if held.extend(&body) {
                if self.downloads.len() >= MAX_TRANSFERS_PER_SESSION {
                    self.downloads.remove(0);
                }
                self.downloads.push(Download {
                    key,
                    head: response,
                    body: held,
                    etag,
                    last: now,
                });
            }
            // Past the budget nothing is stored: the next block runs the handler again, and
            // the ETag (a hash of the representation) tells the client whether it changed.
        }
        answer
    }

    // ---- client ----

    /// A request of ours about to be sent with `token`: the message to send first (the whole
    /// request, or its first block, Size1 giving the whole body's size).
    pub fn client_request(
        &mut self,
        config: &BlockwiseConfig,
        token: &[u8],
        request: Packet,
        block_size: Option<usize>,
        limits: Limits,
    ) -> Packet {
        self.client.retain(|t| t.token != token);
        // A block size asked for by the request is kept; otherwise BERT when agreed and our
        // block size is the largest (RFC 8323 §6: BERT extends SZX 6).
        let bert = limits
            .bert
            .filter(|_| block_size.is_none() && config.szx == MAX_SZX);
        let szx = match bert {
            Some(_) => BERT_SZX,
            None => block_size.map_or(config.szx, szx_for).min(limits.szx),
        };
        let len = request.payload.len();
        let whole = block_size.map_or(limits.whole, |b| b.min(limits.whole));
        let mut transfer = ClientTransfer {
            token: token.to_vec(),
            request,
            upload: None,
            body: Vec::new(),
            etag: None,
            observe: None,
            restarted: false,
            bert: bert.unwrap_or(0),
            closing: None,
        };
        let first = if len <= whole {
            let mut first = transfer.request.clone();
            if block_size.is_some() && is_fetching(&first) {
                // Early negotiation (§2.4): ask for blocks no larger than this.
                set_option(&mut first, BLOCK2, BlockValue::new(0, false, szx).encode());
            }
            first
        } else {
            transfer.next_upload(0, szx)
        };
        // Kept whatever the size: the response may come in blocks, whose requests repeat this
        // one. Forgotten when the response is delivered, or by `client_retain`.
        self.client.push(transfer);
        first
    }

    /// A response to our request with `token`; `None` when it is no business of the block-wise
    /// layer (deliver it as it is). `observing`: the session has observations of ours, whose
    /// notifications a BERT download could hold up at libcoap (see [`closing_request`]).
    pub fn client_response(
        &mut self,
        config: &BlockwiseConfig,
        token: &[u8],
        response: &Packet,
        limits: Limits,
        observing: bool,
    ) -> Option<ClientStep> {
        let block2 = block_option(response, BLOCK2);
        let at = self.client.iter().position(|t| t.token == token)?;
        let step = self.client_step(config, at, response, block2, limits, observing);
        if !matches!(step, ClientStep::Send(_)) {
            self.client.remove(at);
        }
        Some(step)
    }

    fn client_step(
        &mut self,
        config: &BlockwiseConfig,
        at: usize,
        response: &Packet,
        block2: Option<BlockValue>,
        limits: Limits,
        observing: bool,
    ) -> ClientStep {
        let transfer = &mut self.client[at];
        if let Some(whole) = transfer.closing.take() {
            // The answer to the closing request: the body is already whole and of one ETag,
            // so whatever the answer says, the response is the one assembled.
            return ClientStep::Deliver(whole);
        }
        if let Some((taken, in_flight, szx)) = transfer.upload {
            let block1 = block_option(response, BLOCK1);
            let code = u8::from(response.header.code);
            let total = transfer.request.payload.len();
            if code == 0x5f {
                // 2.31 Continue: the server took the block; a smaller SZX in its Block1 is the
                // size it wants from now on (§2.5). BERT echoed to BERT goes on as BERT (RFC
                // 8323 §6); any ordinary size is smaller than a BERT block.
                let theirs = block1.map_or(szx, |b| b.szx);
                let szx = if theirs == BERT_SZX && szx == BERT_SZX {
                    BERT_SZX
                } else {
                    theirs.min(MAX_SZX).min(szx)
                };
                let taken = taken + in_flight;
                if taken >= total {
                    return ClientStep::Fail(BlockwiseError::BadBlock);
                }
                return ClientStep::Send(transfer.next_upload(taken, szx));
            }
            if code == 0x8d && taken == 0 {
                if let Some(wanted) = block1.filter(|b| b.szx < szx) {
                    // 4.13 to the first block, with the block size the server can take
                    // (§2.9.3): start again with that size.
                    return ClientStep::Send(transfer.next_upload(0, wanted.szx));
                }
            }
            // Any other answer ends the upload; a body in blocks may follow (§3.3).
            transfer.upload = None;
            if !block2.is_some_and(|b| b.more && b.num == 0) {
                return ClientStep::Deliver(response.clone());
            }
        }
        let Some(block) = block2 else {
            return ClientStep::Deliver(response.clone());
        };
        if block.is_bert() && !limits.bert_in {
            return ClientStep::Fail(BlockwiseError::BadBlock);
        }
        if block.is_bert() && block.more && !response.payload.len().is_multiple_of(1024) {
            // RFC 8323 §6: a non-final BERT block carries whole 1024-byte blocks, which the
            // next NUM counts.
            return ClientStep::Fail(BlockwiseError::BadBlock);
        }
        let etag = response.get_first_option(CoapOption::ETag).cloned();
        if block.num == 0 {
            transfer.body.clear();
            transfer.etag = etag;
            if let Some(observe) = response.get_first_option(CoapOption::Observe) {
                // A restart fetches block 0 again without Observe (§3.4): the whole response
                // keeps the sequence number of the notification it completes.
                transfer.observe = Some(observe.clone());
            }
        } else if etag != transfer.etag {
            // §2.4: the representation changed; never splice two versions.
            if transfer.restarted {
                return ClientStep::Fail(BlockwiseError::RepresentationChanged);
            }
            transfer.restarted = true;
            transfer.body.clear();
            return ClientStep::Send(transfer.next_download(BlockValue::new(0, false, block.szx)));
        }
        if block.offset() != transfer.body.len() {
            return ClientStep::Fail(BlockwiseError::BadBlock);
        }
        if transfer.body.len() + response.payload.len() > config.max_body_size {
            return ClientStep::Fail(BlockwiseError::TooLarge(config.max_body_size));
        }
        transfer.body.extend_from_slice(&response.payload);
        if block.more {
            if response.payload.is_empty() {
                return ClientStep::Fail(BlockwiseError::BadBlock);
            }
            let next = transfer.body.len() / block.size();
            // BERT asked for again; an ordinary size no larger than the message allows.
            let szx = if block.is_bert() {
                BERT_SZX
            } else {
                block.szx.min(limits.szx)
            };
            return ClientStep::Send(transfer.next_download(BlockValue::new(
                next as u32,
                false,
                szx,
            )));
        }
        let closing =
            closing_request(block, &response.payload, transfer.body.len()).filter(|_| observing);
        let mut whole = response.clone();
        whole.payload = std::mem::take(&mut transfer.body);
        whole.clear_option(CoapOption::Block2);
        if let Some(observe) = transfer.observe.take() {
            set_option(&mut whole, OBSERVE, observe);
        }
        match closing {
            Some(last) => {
                transfer.closing = Some(whole);
                ClientStep::Send(transfer.next_download(last))
            }
            None => ClientStep::Deliver(whole),
        }
    }

    /// The request (as the application made it) of our transfer under `token`: an Observe
    /// registration keeps it, for fetching the later blocks of its notifications.
    pub fn client_request_of(&self, token: &[u8]) -> Option<&Packet> {
        self.client
            .iter()
            .find(|t| t.token == token)
            .map(|t| &t.request)
    }

    /// The first block of a notification, or of the response to an Observe registration (RFC
    /// 7959 §3.4: the server sends block 0, the client fetches the rest). The rest is fetched
    /// with ordinary requests built on `registration`, without Observe and under `token`,
    /// which must not be the observation's: the server keys its observer by endpoint and token
    /// (RFC 7641 §4.1), so a request under the registration's token would be taken as
    /// concerning the registration (a GET without Observe under it ends the observation at
    /// some servers). The step is the request for block 1 (or a failure); the whole
    /// notification comes out of a later [`Blockwise::client_response`] under `token`, with
    /// the Observe of this first block.
    pub fn notification_fetch(
        &mut self,
        config: &BlockwiseConfig,
        token: &[u8],
        mut registration: Packet,
        first: &Packet,
        limits: Limits,
    ) -> ClientStep {
        self.client.retain(|t| t.token != token);
        registration.set_token(token.to_vec());
        registration.payload.clear();
        self.client.push(ClientTransfer {
            token: token.to_vec(),
            request: registration,
            upload: None,
            body: Vec::new(),
            etag: None,
            observe: None,
            restarted: false,
            bert: 0,
            closing: None,
        });
        let at = self.client.len() - 1;
        let block2 = block_option(first, BLOCK2);
        let step = self.client_step(config, at, first, block2, limits, true);
        if !matches!(step, ClientStep::Send(_)) {
            self.client.remove(at);
        }
        step
    }

    /// Forgets the transfer of our request with `token` (cancelled, failed, timed out).
    pub fn client_forget(&mut self, token: &[u8]) {
        self.client.retain(|t| t.token != token);
    }

    /// Keeps only the transfers of requests for which `pending` holds.
    pub fn client_retain(&mut self, mut pending: impl FnMut(&[u8]) -> bool) {
        self.client.retain(|t| pending(&t.token));
    }
}

impl ClientTransfer {
    /// The block of the body that starts at `offset`, of size exponent `szx`.
    fn next_upload(&mut self, offset: usize, szx: u8) -> Packet {
        // A BERT block carries several 1024-byte blocks; its NUM counts 1024-byte blocks.
        let size = if szx == BERT_SZX && self.bert > 0 {
            self.bert
        } else {
            block_size_of(szx)
        };
        let total = self.request.payload.len();
        let end = (offset + size).min(total);
        let mut next = self.request.clone();
        next.payload = self.request.payload[offset..end].to_vec();
        let num = (offset / block_size(szx)) as u32;
        set_option(
            &mut next,
            BLOCK1,
            BlockValue::new(num, end < total, szx).encode(),
        );
        if offset == 0 {
            set_option(&mut next, SIZE1, encode_uint(total as u32));
        } else {
            next.clear_option(CoapOption::Size1);
        }
        self.upload = Some((offset, end - offset, szx));
        next
    }

    /// The request for a later block of the response: the request without its body (§3.3) or
    /// Observe (§3.4), with Block2.
    fn next_download(&self, block: BlockValue) -> Packet {
        let mut next = self.request.clone();
        next.payload.clear();
        next.clear_option(CoapOption::Block1);
        next.clear_option(CoapOption::Size1);
        next.clear_option(CoapOption::Observe);
        set_option(&mut next, BLOCK2, block.encode());
        next
    }
}

/// The Block2 of one more request after the last BERT block of a download, when that block
/// carried more than one 1024-byte unit: the unit that holds the last byte, asked for by its
/// number. No RFC needs it; libcoap 4.3.1 does. Its server takes a BERT transfer as finished
/// only when the unit holding the last byte is asked for by number (it counts one 1024-byte
/// unit per BERT request when it checks), and until then holds back every Observe
/// notification on that connection: for 2 s after the last block was fetched, and then until
/// something else wakes it (it sets no timer). One small request, answered from its cache,
/// lets the notification go at once; any other server just answers it. Sent only on sessions
/// with observations of ours, the only ones whose traffic it changes.
fn closing_request(last: BlockValue, payload: &[u8], total: usize) -> Option<BlockValue> {
    (last.is_bert() && payload.len() > BERT_UNIT)
        .then(|| BlockValue::new(((total - 1) / BERT_UNIT) as u32, false, BERT_SZX))
}

fn block_size_of(szx: u8) -> usize {
    block_size(szx.min(MAX_SZX))
}

/// The block at `offset` of `body` (`shape`: its size exponent and the bytes it carries, more
/// than one 1024-byte block for BERT) as a response built on `head`, and whether more follow.
/// Beyond the end: 4.02 Bad Option (§2.4 leaves the code open; the Block2 value is what is
/// wrong).
fn slice(
    head: &Packet,
    body: &[u8],
    etag: [u8; 8],
    offset: usize,
    (szx, size): (u8, usize),
) -> (Packet, bool) {
    if offset >= body.len() && !(offset == 0 && body.is_empty()) {
        return (
            diagnostic(
                ResponseType::BadOption,
                "block beyond the end of the representation",
            ),
            false,
        );
    }
    let end = (offset + size).min(body.len());
    let more = end < body.len();
    let mut answer = head.clone();
    answer.payload = body[offset..end].to_vec();
    // NUM counts blocks of the size SZX names (1024 bytes for BERT, RFC 8323 §6).
    set_option(
        &mut answer,
        BLOCK2,
        BlockValue::new((offset / block_size(szx)) as u32, more, szx).encode(),
    );
    set_option(&mut answer, ETAG, etag.to_vec());
    if offset == 0 {
        set_option(&mut answer, SIZE2, encode_uint(body.len() as u32));
    }
    (answer, more)
}

fn continue_block(offset: usize, block: BlockValue, ours: u8) -> Packet {
    // The echo uses our size exponent when it is smaller (early negotiation, §2.5), its NUM
    // counted in that size: the client continues from the bytes it sent, in our block size.
    let szx = if block.is_bert() {
        block.szx
    } else {
        block.szx.min(ours)
    };
    let num = (offset / block_size(szx)) as u32;
    let mut answer = Packet::new();
    answer.header.code = MessageClass::Response(ResponseType::Continue);
    set_option(
        &mut answer,
        BLOCK1,
        BlockValue::new(num, true, szx).encode(),
    );
    answer
}

fn incomplete(why: &str) -> ServerStep {
    ServerStep::Answer(diagnostic(ResponseType::RequestEntityIncomplete, why))
}

/// 4.13 with Size1 naming the largest body we take (§2.9.3), and Block1 with the size we take
/// blocks of, inviting a block-wise retry when the body came whole.
fn too_large(config: &BlockwiseConfig, szx: Option<u8>) -> Packet {
    let mut answer = Packet::new();
    answer.header.code = MessageClass::Response(ResponseType::RequestEntityTooLarge);
    if let Some(szx) = szx {
        set_option(&mut answer, BLOCK1, BlockValue::new(0, false, szx).encode());
    }
    set_option(
        &mut answer,
        SIZE1,
        encode_uint(u32::try_from(config.max_body_size).unwrap_or(u32::MAX)),
    );
    answer
}

fn diagnostic(code: ResponseType, text: &str) -> Packet {
    let mut answer = Packet::new();
    answer.header.code = MessageClass::Response(code);
    answer.payload = text.as_bytes().to_vec();
    answer
}

fn is_success(packet: &Packet) -> bool {
    u8::from(packet.header.code) >> 5 == 2
}

/// GET and FETCH fetch representations: the requests early Block2 negotiation applies to.
fn is_fetching(request: &Packet) -> bool {
    matches!(u8::from(request.header.code), 0x01 | 0x05)
}

/// The Block1 or Block2 option of `packet`, when present and readable.
pub(crate) fn block_option(packet: &Packet, number: u16) -> Option<BlockValue> {
    let value = packet.get_first_option(CoapOption::from(number))?;
    BlockValue::parse(value).ok()
}

fn uint(packet: &Packet, number: u16) -> Option<u32> {
    decode_uint(packet.get_first_option(CoapOption::from(number))?)
}

fn set_option(packet: &mut Packet, number: u16, value: Vec<u8>) {
    let option = CoapOption::from(number);
    packet.clear_option(option);
    packet.add_option(option, value);
}

/// What identifies the body a block belongs to (RFC 7959 §2.4, §2.5): the method and every
/// option but the block-wise ones and Observe (the later blocks of a notification are fetched
/// without it, §3.4), in wire order.
fn request_key(request: &Packet) -> Vec<u8> {
    let mut key = vec![u8::from(request.header.code)];
    for (number, value) in crate::proto::wire::options::packet_options(request) {
        if matches!(number, BLOCK1 | BLOCK2 | SIZE1 | SIZE2 | OBSERVE) {
            continue;
        }
        key.extend_from_slice(&number.to_be_bytes());
        key.extend_from_slice(&(value.len() as u32).to_be_bytes());
        key.extend_from_slice(value);
    }
    key
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use coap_lite::{CoapOption, MessageType, Packet};
    use proptest::prelude::*;

    use super::*;
    use crate::proto::config::KeepaliveConfig;
    use crate::proto::datagram::DatagramSession;
    use crate::proto::message::{Request, Response, Status};
    use crate::proto::rng::Rng;
    use crate::proto::ProtocolEvent;

    fn session(config: BlockwiseConfig, seed: u64, t0: Instant) -> DatagramSession {
        let mut s = DatagramSession::new(KeepaliveConfig::default(), Rng::seeded(seed), t0);
        s.set_blockwise(Arc::new(config));
        s
    }

    fn drain(s: &mut DatagramSession) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn events(s: &mut DatagramSession) -> Vec<ProtocolEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn parse(bytes: &[u8]) -> Packet {
        Packet::from_bytes(bytes).unwrap()
    }

    fn option(packet: &Packet, number: u16) -> Option<Vec<u8>> {
        packet.get_first_option(CoapOption::from(number)).cloned()
    }

    /// A CON request with Message ID `mid`, token `aa`, to `/echo`, with these options.
    fn request(code: u8, mid: u16, options: &[(u16, Vec<u8>)], payload: &[u8]) -> Vec<u8> {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::from(code);
        packet.header.set_type(MessageType::Confirmable);
        packet.header.message_id = mid;
        packet.set_token(vec![0xaa]);
        packet.add_option(CoapOption::UriPath, b"echo".to_vec());
        for (number, value) in options {
            packet.add_option(CoapOption::from(*number), value.clone());
        }
        packet.payload = payload.to_vec();
        packet.to_bytes().unwrap()
    }

    fn block1(num: u32, more: bool, szx: u8) -> (u16, Vec<u8>) {
        (BLOCK1, BlockValue::new(num, more, szx).encode())
    }

    #[test]
    fn block_values_encode_as_rfc7959_writes_them() {
        let cases: &[(u32, bool, u8, &[u8])] = &[
            (0, false, 0, &[]),
            (0, true, 2, &[0x0a]),
            (1, true, 6, &[0x1e]),
            (2, false, 6, &[0x26]),
            (16, false, 6, &[0x01, 0x06]),
            (4096, true, 4, &[0x01, 0x00, 0x0c]),
            (0xF_FFFF, true, 7, &[0xff, 0xff, 0xff]),
        ];
        for &(num, more, szx, bytes) in cases {
            let value = BlockValue::new(num, more, szx);
            assert_eq!(value.encode(), bytes, "{value:?}");
            assert_eq!(BlockValue::parse(bytes), Ok(value));
        }
        assert_eq!(BlockValue::new(3, false, 2).offset(), 192);
        assert!(BlockValue::new(0, false, 7).is_bert());
        assert_eq!(BlockValue::new(0, false, 7).size(), 1024);
        assert_eq!(
            BlockValue::parse(&[1, 2, 3, 4]),
            Err(BlockValueError::TooLong(4))
        );
        assert_eq!(
            (szx_for(1024), szx_for(1000), szx_for(16), szx_for(9000)),
            (6, 5, 0, 6)
        );
    }

    proptest! {
        #[test]
        fn prop_block_values_round_trip(num in 0u32..(1 << 20), more: bool, szx in 0u8..8) {
            let value = BlockValue::new(num, more, szx);
            prop_assert_eq!(BlockValue::parse(&value.encode()), Ok(value));
        }

        #[test]
        fn prop_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..6)) {
            let _ = BlockValue::parse(&bytes);
        }
    }

    #[test]
    fn a_3000_byte_response_goes_in_three_blocks_with_etag_and_size2() {
        let t0 = Instant::now();
        let mut server = session(BlockwiseConfig::default(), 1, t0);
        let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        server.handle_datagram(t0, &request(0x01, 0x0100, &[], b""));
        let Some(ProtocolEvent::Request(incoming)) = events(&mut server).pop() else {
            panic!("the GET is handed up")
        };
        server.respond(
            &incoming,
            &Response::new(Status::Content).with_payload(body.clone()),
        );
        let first = drain(&mut server);
        assert_eq!(first.len(), 1);
        let etag = etag_of(None, &body);
        // ACK 2.05, MID 0100, token aa; ETag (4), 8 bytes; Block2 (23, delta 19 = 13 + 6)
        // 0/1/1024 = 0x0e; Size2 (28, delta 5) 3000 = 0x0bb8; then the first 1024 bytes.
        let mut expected = vec![0x61, 0x45, 0x01, 0x00, 0xaa, 0x48];
        expected.extend_from_slice(&etag);
        expected.extend_from_slice(&[0xd1, 0x06, 0x0e, 0x52, 0x0b, 0xb8, 0xff]);
        expected.extend_from_slice(&body[..1024]);
        assert_eq!(first[0], expected);
        // Blocks 1 and 2 come from the stored representation: no handler runs.
        let mut got = body[..1024].to_vec();
        for (num, mid) in [(1u32, 0x0101u16), (2, 0x0102)] {
            let ask = (BLOCK2, BlockValue::new(num, false, 6).encode());
            server.handle_datagram(t0, &request(0x01, mid, &[ask], b""));
            assert!(events(&mut server).is_empty(), "served without the handler");
            let answer = parse(&drain(&mut server)[0]);
            let block = block_option(&answer, BLOCK2).unwrap();
            assert_eq!((block.num, block.more, block.szx), (num, num < 2, 6));
            assert_eq!(option(&answer, ETAG), Some(etag.to_vec()));
            assert_eq!(
                option(&answer, SIZE2),
                None,
                "Size2 on the first block only"
            );
            got.extend_from_slice(&answer.payload);
        }
        assert_eq!(got, body);
    }

    /// Carries every datagram between a client and a server session (the server's handler
    /// answers each request with `handler`) until the client has its response.
    fn exchange(
        client: &mut DatagramSession,
        server: &mut DatagramSession,
        t0: Instant,
        mut handler: impl FnMut(&Request) -> Response,
    ) -> (Response, usize, usize) {
        let (mut datagrams, mut handled) = (0, 0);
        for _ in 0..100_000 {
            for bytes in drain(client) {
                datagrams += 1;
                server.handle_datagram(t0, &bytes);
            }
            for event in events(server) {
                if let ProtocolEvent::Request(incoming) = event {
                    handled += 1;
                    server.respond(&incoming, &handler(incoming.request()));
                }
            }
            for bytes in drain(server) {
                client.handle_datagram(t0, &bytes);
            }
            for event in events(client) {
                match event {
                    ProtocolEvent::Response { response, .. } => {
                        return (*response, datagrams, handled)
                    }
                    ProtocolEvent::RequestFailed { error, .. } => panic!("{error:?}"),
                    _ => {}
                }
            }
        }
        panic!("no response")
    }

    #[test]
    fn a_1_mb_upload_is_reassembled_and_handed_up_once_then_fetched_back() {
        let t0 = Instant::now();
        let config = BlockwiseConfig::default();
        let budget = config.budget().clone();
        let mut server = session(config, 2, t0);
        let mut client = session(BlockwiseConfig::default(), 3, t0);
        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut stored = Vec::new();
        client.send_request(
            t0,
            &Request::put("/echo", body.clone()),
            Duration::from_secs(60),
        );
        let (response, datagrams, handled) = exchange(&mut client, &mut server, t0, |r| {
            stored = r.payload.clone();
            Response::new(Status::Changed)
        });
        assert_eq!(response.status, Status::Changed);
        assert_eq!(
            (handled, datagrams),
            (1, 977),
            "977 blocks of 1024, one handler run"
        );
        assert_eq!(stored, body);
        assert_eq!(budget.used(), 0, "nothing held once the body is handed up");
        // And back, in 977 blocks, one handler run.
        client.send_request(t0, &Request::get("/echo"), Duration::from_secs(60));
        let (response, datagrams, handled) = exchange(&mut client, &mut server, t0, |_| {
            Response::new(Status::Content).with_payload(stored.clone())
        });
        assert_eq!((handled, datagrams), (1, 977));
        assert_eq!(response.payload, body);
        assert_eq!(
            budget.used(),
            0,
            "the representation is dropped after its last block"
        );
    }

    #[test]
    fn a_smaller_block_size_is_negotiated_early_both_ways() {
        let t0 = Instant::now();
        let mut server = session(BlockwiseConfig::new(256, 1 << 20, 1 << 24), 4, t0);
        let mut client = session(BlockwiseConfig::default(), 5, t0);
        let body = vec![0x5a; 2000];
        // The client sends 1024-byte blocks; the server's 2.31 asks for 256: 1024 + 4 * 256.
        client.send_request(
            t0,
            &Request::put("/echo", body.clone()),
            Duration::from_secs(60),
        );
        let mut got = Vec::new();
        let (_, datagrams, _) = exchange(&mut client, &mut server, t0, |r| {
            got = r.payload.clone();
            Response::new(Status::Changed)
        });
        assert_eq!((datagrams, got.len()), (5, 2000));
        // A GET asking for 64-byte blocks gets them: 2000 / 64 = 32 blocks.
        client.send_request(
            t0,
            &Request::get("/echo").with_block_size(64),
            Duration::from_secs(60),
        );
        let (response, datagrams, _) = exchange(&mut client, &mut server, t0, |_| {
            Response::new(Status::Content).with_payload(body.clone())
        });
        assert_eq!((datagrams, response.payload), (32, body));
    }

    #[test]
    fn blocks_out_of_sequence_or_without_a_start_get_4_08() {
        let t0 = Instant::now();
        let mut server = session(BlockwiseConfig::default(), 6, t0);
        // Block 0 of 64 bytes: 2.31 Continue (0x5f) echoing Block1 0/1/64 (0x0a).
        server.handle_datagram(t0, &request(0x03, 1, &[block1(0, true, 2)], &[1; 64]));
        assert!(events(&mut server).is_empty());
        assert_eq!(
            drain(&mut server),
            vec![vec![0x61, 0x5f, 0x00, 0x01, 0xaa, 0xd1, 0x0e, 0x0a]]
        );
        // Block 2 next: a gap. 4.08 (0x88), and the partial body is dropped.
        server.handle_datagram(t0, &request(0x03, 2, &[block1(2, true, 2)], &[1; 64]));
        let answer = parse(&drain(&mut server)[0]);
        assert_eq!(u8::from(answer.header.code), 0x88);
        // So block 1 now has no start either.
        server.handle_datagram(t0, &request(0x03, 3, &[block1(1, false, 2)], &[1; 10]));
        assert_eq!(u8::from(parse(&drain(&mut server)[0]).header.code), 0x88);
        assert!(events(&mut server).is_empty(), "no handler saw a part");
        // SZX 7 over UDP: 4.00.
        server.handle_datagram(t0, &request(0x03, 4, &[block1(0, true, 7)], &[1; 1024]));
        assert_eq!(u8::from(parse(&drain(&mut server)[0]).header.code), 0x80);
    }

    #[test]
    fn a_body_above_the_maximum_gets_4_13_with_size1_and_an_endless_stream_is_bounded() {
        let t0 = Instant::now();
        let config = BlockwiseConfig::new(1024, 1000, 1 << 20);
        let budget = config.budget().clone();
        let mut server = session(config, 7, t0);
        // Announced too large by Size1 (60) = 2000: 4.13 at once, Size1 = 1000 (0x03e8) and
        // Block1 0/0/1024 (0x06): ACK 4.13, Block1 (27, delta 27: 13 + 14), Size1 (60: 13 + 20).
        let size1 = (SIZE1, encode_uint(2000));
        server.handle_datagram(
            t0,
            &request(0x03, 1, &[block1(0, true, 2), size1], &[1; 64]),
        );
        assert_eq!(
            drain(&mut server),
            vec![vec![
                0x61, 0x8d, 0x00, 0x01, 0xaa, 0xd1, 0x0e, 0x06, 0xd2, 0x14, 0x03, 0xe8
            ]]
        );
        // No Size1, blocks that never end: taken until the maximum, then 4.13.
        let mut codes = Vec::new();
        for num in 0..40u32 {
            let bytes = request(0x03, 100 + num as u16, &[block1(num, true, 2)], &[2; 64]);
            server.handle_datagram(t0, &bytes);
            codes.push(u8::from(parse(&drain(&mut server)[0]).header.code));
            assert!(budget.used() <= 1000);
        }
        assert_eq!(&codes[..15], &[0x5f; 15], "15 * 64 = 960 bytes taken");
        assert_eq!(codes[15], 0x8d, "the 16th would pass 1000 bytes");
        assert!(
            codes[16..].iter().all(|&c| c == 0x88),
            "and the rest has no start"
        );
        assert_eq!(budget.used(), 0);
        assert!(events(&mut server).is_empty());
    }

    #[test]
    fn many_partial_uploads_stay_within_the_session_and_memory_bounds() {
        let t0 = Instant::now();
        let config = BlockwiseConfig::new(1024, 1 << 20, 6 * 1024);
        let budget = config.budget().clone();
        let mut server = session(config, 8, t0);
        // 20 bodies started on 20 paths (a Uri-Query each): at most 4 held, oldest dropped.
        for i in 0..20u16 {
            let query = (15, format!("n={i}").into_bytes());
            server.handle_datagram(
                t0,
                &request(0x03, i, &[query, block1(0, true, 6)], &[3; 1024]),
            );
            let code = u8::from(parse(&drain(&mut server)[0]).header.code);
            assert_eq!(code, 0x5f);
        }
        assert_eq!(
            budget.used(),
            4 * 1024,
            "MAX_TRANSFERS_PER_SESSION bodies, no more"
        );
        // The budget is shared: a second session finds only 2 KiB left, then 5.03.
        let mut other = session(BlockwiseConfig::default(), 9, t0);
        other.set_blockwise(Arc::new(BlockwiseConfig {
            budget: budget.clone(),
            ..BlockwiseConfig::default()
        }));
        let mut codes = Vec::new();
        for i in 0..5u16 {
            let query = (15, format!("m={i}").into_bytes());
            other.handle_datagram(
                t0,
                &request(0x03, i, &[query, block1(0, true, 6)], &[3; 1024]),
            );
            codes.push(u8::from(parse(&drain(&mut other)[0]).header.code));
        }
        assert_eq!(codes, vec![0x5f, 0x5f, 0xa3, 0xa3, 0xa3]);
        let busy = parse(&{
            let query = (15, b"m=9".to_vec());
            other.handle_datagram(
                t0,
                &request(0x03, 9, &[query, block1(0, true, 6)], &[3; 1024]),
            );
            drain(&mut other).remove(0)
        });
        assert_eq!(
            option(&busy, 14),
            Some(vec![5]),
            "Max-Age: try again in 5 s"
        );
        drop(server);
        drop(other);
        assert_eq!(budget.used(), 0, "a dropped session gives its bytes back");
    }

    #[test]
    fn an_abandoned_upload_expires_after_exchange_lifetime() {
        let t0 = Instant::now();
        let config = BlockwiseConfig::default();
        let budget = config.budget().clone();
        let mut server = session(config, 10, t0);
        server.handle_datagram(t0, &request(0x03, 1, &[block1(0, true, 6)], &[4; 1024]));
        drain(&mut server);
        assert_eq!(budget.used(), 1024);
        let lifetime = Duration::from_secs(247);
        assert_eq!(server.poll_timeout(), Some(t0 + lifetime));
        server.handle_timeout(t0 + lifetime - Duration::from_millis(1));
        assert_eq!(budget.used(), 1024);
        server.handle_timeout(t0 + lifetime);
        assert_eq!(budget.used(), 0);
        let late = t0 + lifetime + Duration::from_secs(1);
        server.handle_datagram(late, &request(0x03, 2, &[block1(1, false, 6)], &[4; 10]));
        assert_eq!(u8::from(parse(&drain(&mut server)[0]).header.code), 0x88);
    }

    #[test]
    fn a_representation_that_changes_mid_transfer_is_never_spliced() {
        let t0 = Instant::now();
        // The server keeps nothing (no budget): each block runs the handler again.
        let mut server = session(BlockwiseConfig::new(1024, 1 << 20, 0), 11, t0);
        let mut client = session(BlockwiseConfig::default(), 12, t0);
        client.send_request(t0, &Request::get("/echo"), Duration::from_secs(60));
        let mut version = 0u8;
        let (response, _, handled) = exchange(&mut client, &mut server, t0, |_| {
            // A new version after the first two blocks, then stable.
            version = version.saturating_add(1);
            let v = if version <= 2 { 1 } else { 2 };
            Response::new(Status::Content).with_payload(vec![v; 3000])
        });
        // Blocks 0 and 1 of version 1; block 2 is of version 2 (another ETag): restart from
        // block 0, and the three blocks of version 2 are what is delivered.
        assert_eq!(handled, 6);
        assert_eq!(response.payload, vec![2; 3000]);
    }

    #[test]
    fn a_bert_download_ends_with_one_request_for_the_unit_holding_its_last_byte() {
        // 100000 bytes as libcoap sends them over TCP: 63 units in block 0, the other 35488
        // bytes (35 units and 672 bytes) in the last BERT block.
        let config = BlockwiseConfig::default();
        let limits = Limits {
            whole: 65536,
            szx: MAX_SZX,
            bert: Some(64512),
            bert_in: true,
        };
        let mut blockwise = Blockwise::default();
        let token = [9u8; 4];
        let mut get = Packet::new();
        get.header.code = MessageClass::from(0x01);
        get.add_option(CoapOption::UriPath, b"example_data".to_vec());
        let first = blockwise.client_request(&config, &token, get, None, limits);
        assert_eq!(block_option(&first, BLOCK2), None);
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let answer = |num: u32, more: bool, range: std::ops::Range<usize>| {
            let mut p = Packet::new();
            p.header.code = MessageClass::from(0x45);
            p.set_token(token.to_vec());
            p.add_option(CoapOption::ETag, vec![1]);
            p.add_option(
                CoapOption::Block2,
                BlockValue::new(num, more, BERT_SZX).encode(),
            );
            p.payload = body[range].to_vec();
            p
        };
        let step =
            blockwise.client_response(&config, &token, &answer(0, true, 0..64512), limits, true);
        let Some(ClientStep::Send(next)) = step else {
            panic!("the next block is asked for, not {step:?}");
        };
        assert_eq!(
            block_option(&next, BLOCK2),
            Some(BlockValue::new(63, false, BERT_SZX))
        );
        let step = blockwise.client_response(
            &config,
            &token,
            &answer(63, false, 64512..100_000),
            limits,
            true,
        );
        let Some(ClientStep::Send(closing)) = step else {
            panic!("the closing request, not {step:?}");
        };
        assert_eq!(
            block_option(&closing, BLOCK2),
            Some(BlockValue::new(97, false, BERT_SZX)),
            "the unit at 99328..100000"
        );
        let step = blockwise.client_response(
            &config,
            &token,
            &answer(97, false, 99328..100_000),
            limits,
            true,
        );
        let Some(ClientStep::Deliver(whole)) = step else {
            panic!("the whole body, not {step:?}");
        };
        assert!(whole.payload == body);
        assert_eq!(block_option(&whole, BLOCK2), None);
        assert!(blockwise.is_empty());

        // A last BERT block of one unit or less is itself the unit of the last byte.
        let mut blockwise = Blockwise::default();
        let mut get = Packet::new();
        get.header.code = MessageClass::from(0x01);
        blockwise.client_request(&config, &token, get, None, limits);
        blockwise.client_response(&config, &token, &answer(0, true, 0..64512), limits, true);
        let short = answer(63, false, 64512..65000);
        let step = blockwise.client_response(&config, &token, &short, limits, true);
        assert!(matches!(step, Some(ClientStep::Deliver(_))), "{step:?}");
    }

    #[test]
    fn a_client_fetches_the_rest_of_a_block2_response_itself() {
        let t0 = Instant::now();
        let mut client = session(BlockwiseConfig::default(), 13, t0);
        let token = client.send_request(t0, &Request::get("/big"), Duration::from_secs(60));
        let get = parse(&drain(&mut client)[0]);
        assert_eq!(
            option(&get, BLOCK2),
            None,
            "no Block2 unless a block size is asked for"
        );
        let answer = |mid: u16, num: u32, more: bool, payload: &[u8]| {
            let mut p = Packet::new();
            p.header.code = MessageClass::from(0x45);
            p.header.set_type(MessageType::Acknowledgement);
            p.header.message_id = mid;
            p.set_token(token.clone());
            p.add_option(CoapOption::ETag, vec![7; 4]);
            p.add_option(CoapOption::Block2, BlockValue::new(num, more, 4).encode());
            p.payload = payload.to_vec();
            p.to_bytes().unwrap()
        };
        client.handle_datagram(t0, &answer(get.header.message_id, 0, true, &[1; 256]));
        assert!(!events(&mut client)
            .iter()
            .any(|e| matches!(e, ProtocolEvent::Response { .. })));
        let next = parse(&drain(&mut client)[0]);
        assert_eq!(next.header.get_type(), MessageType::Confirmable);
        assert_ne!(
            next.header.message_id, get.header.message_id,
            "an exchange of its own"
        );
        assert_eq!(option(&next, BLOCK2), Some(vec![0x14]), "block 1 of 256");
        client.handle_datagram(t0, &answer(next.header.message_id, 1, false, &[2; 10]));
        let delivered = events(&mut client).into_iter().find_map(|e| match e {
            ProtocolEvent::Response { response, .. } => Some(response),
            _ => None,
        });
        let whole = delivered.expect("one whole response");
        assert_eq!(whole.payload.len(), 266);
        assert!(drain(&mut client).is_empty());
    }

    #[test]
    fn over_a_stream_no_message_exceeds_the_peers_max_message_size() {
        use crate::proto::stream::StreamSession;
        let t0 = Instant::now();
        // Both announce the base Max-Message-Size, 1152 bytes.
        let mut client = StreamSession::new(KeepaliveConfig::default(), Rng::seeded(20), t0, 1152);
        let mut server = StreamSession::new(KeepaliveConfig::default(), Rng::seeded(21), t0, 1152);
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
        client.send_request(
            t0,
            &Request::put("/echo", body.clone()),
            Duration::from_secs(60),
        );
        let (mut stored, mut largest, mut handled) = (Vec::new(), 0, 0);
        let mut delivered = None;
        for _ in 0..10_000 {
            while let Some(bytes) = client.poll_transmit() {
                largest = largest.max(bytes.len());
                server.handle_bytes(t0, &bytes);
            }
            while let Some(event) = server.poll_event() {
                if let ProtocolEvent::Request(incoming) = event {
                    handled += 1;
                    let response = if incoming.request().payload.is_empty() {
                        Response::new(Status::Content).with_payload(stored.clone())
                    } else {
                        stored = incoming.request().payload.clone();
                        Response::new(Status::Changed)
                    };
                    server.respond(&incoming, &response);
                }
            }
            while let Some(bytes) = server.poll_transmit() {
                largest = largest.max(bytes.len());
                client.handle_bytes(t0, &bytes);
            }
            while let Some(event) = client.poll_event() {
                if let ProtocolEvent::Response { response, .. } = event {
                    if response.status == Status::Changed {
                        client.send_request(t0, &Request::get("/echo"), Duration::from_secs(60));
                    } else {
                        delivered = Some(response);
                    }
                }
            }
            if delivered.is_some() {
                break;
            }
        }
        assert_eq!(handled, 2, "one PUT, one GET, each whole");
        assert_eq!(stored, body);
        assert_eq!(delivered.expect("the GET's response").payload, body);
        assert!(largest <= 1152, "a message of {largest} bytes");
    }

    // ---- Block2 with Observe (RFC 7959 §3.4) ----

    /// A 2.05 from the server: of type `kind`, with Message ID `mid`, `token`, these options.
    fn content(
        kind: MessageType,
        mid: u16,
        token: &[u8],
        options: &[(u16, Vec<u8>)],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut packet = Packet::new();
        packet.header.code = MessageClass::from(0x45);
        packet.header.set_type(kind);
        packet.header.message_id = mid;
        packet.set_token(token.to_vec());
        for (number, value) in options {
            packet.add_option(CoapOption::from(*number), value.clone());
        }
        packet.payload = payload.to_vec();
        packet.to_bytes().unwrap()
    }

    /// The responses handed up, with their tokens.
    fn responses(events: Vec<ProtocolEvent>) -> Vec<(Vec<u8>, Response)> {
        events
            .into_iter()
            .filter_map(|e| match e {
                ProtocolEvent::Response { token, response } => Some((token, *response)),
                _ => None,
            })
            .collect()
    }

    /// A client with an observation of `/obs` under the returned token, registered by a whole
    /// first response with Observe 5.
    fn observing(seed: u64, t0: Instant) -> (DatagramSession, Vec<u8>) {
        let mut client = session(BlockwiseConfig::default(), seed, t0);
        let token = client.send_request(
            t0,
            &Request::get("/obs").observing(),
            Duration::from_secs(60),
        );
        let registration = parse(&drain(&mut client)[0]);
        let ack = MessageType::Acknowledgement;
        let first = content(
            ack,
            registration.header.message_id,
            &token,
            &[(OBSERVE, vec![5])],
            b"small",
        );
        client.handle_datagram(t0, &first);
        assert_eq!(responses(events(&mut client)).len(), 1);
        assert_eq!(client.observations(), 1);
        (client, token)
    }

    /// The bytes of a CON GET `/obs` for Block2 `block` under `token`, with Message ID `mid`:
    /// no Observe (RFC 7959 §3.4), no payload.
    fn block_get(mid: u16, token: &[u8], block: u8) -> Vec<u8> {
        // CON GET, TKL 4; Uri-Path (11) "obs": b3; Block2 (23, delta 12): c1 and the value.
        let mut bytes = vec![0x44, 0x01];
        bytes.extend_from_slice(&mid.to_be_bytes());
        bytes.extend_from_slice(token);
        bytes.extend_from_slice(&[0xb3, b'o', b'b', b's', 0xc1, block]);
        bytes
    }

    #[test]
    fn a_notification_in_blocks_is_completed_by_a_get_without_observe_under_a_fresh_token() {
        let t0 = Instant::now();
        let (mut client, token) = observing(30, t0);
        // NON notification, Observe 6, an ETag, Block2 0/1/64 (0x0a), 64 bytes: nothing is
        // handed up yet; one request goes out, for block 1 of 64 (0x12).
        let etag = (ETAG, vec![7; 4]);
        let notification = content(
            MessageType::NonConfirmable,
            0x7001,
            &token,
            &[(OBSERVE, vec![6]), etag.clone(), (BLOCK2, vec![0x0a])],
            &[1; 64],
        );
        client.handle_datagram(t0, &notification);
        assert!(events(&mut client).is_empty(), "no part is handed up");
        let sent = drain(&mut client);
        assert_eq!(sent.len(), 1);
        let fetch = parse(&sent[0]);
        let (mid, fresh) = (fetch.header.message_id, fetch.get_token().to_vec());
        assert_ne!(fresh, token, "not the observation's token");
        assert_eq!(sent[0], block_get(mid, &fresh, 0x12));
        // Its ACK brings the last block (1/0/64, 10 bytes, no Observe): the whole notification
        // is handed up under the observation's token, with the notification's Observe.
        let last = content(
            MessageType::Acknowledgement,
            mid,
            &fresh,
            &[etag, (BLOCK2, vec![0x12])],
            &[2; 10],
        );
        client.handle_datagram(t0, &last);
        let got = responses(events(&mut client));
        assert_eq!(got.len(), 1);
        let (to, whole) = &got[0];
        assert_eq!(to, &token);
        assert_eq!(whole.observe, Some(6));
        assert_eq!(whole.payload, [[1u8; 64].as_slice(), &[2; 10]].concat());
        assert!(drain(&mut client).is_empty());
        assert_eq!(
            (client.observations(), client.pending_requests()),
            (1, 0),
            "the observation goes on; the fetch is done"
        );
    }

    #[test]
    fn the_first_response_to_a_registration_in_blocks_is_fetched_under_another_token() {
        let t0 = Instant::now();
        let mut client = session(BlockwiseConfig::default(), 31, t0);
        let token = client.send_request(
            t0,
            &Request::get("/obs").observing(),
            Duration::from_secs(60),
        );
        let registration = drain(&mut client);
        // CON GET, TKL 4; Observe (6) 0: 60; Uri-Path (11, delta 5) "obs": 53.
        let mid = parse(&registration[0]).header.message_id;
        let mut expected = vec![0x44, 0x01];
        expected.extend_from_slice(&mid.to_be_bytes());
        expected.extend_from_slice(&token);
        expected.extend_from_slice(&[0x60, 0x53, b'o', b'b', b's']);
        assert_eq!(registration, vec![expected]);
        // Registered (Observe 5), block 0 of 64 bytes with more to come.
        let etag = (ETAG, vec![9; 4]);
        let first = content(
            MessageType::Acknowledgement,
            mid,
            &token,
            &[(OBSERVE, vec![5]), etag.clone(), (BLOCK2, vec![0x0a])],
            &[1; 64],
        );
        client.handle_datagram(t0, &first);
        assert!(events(&mut client).is_empty());
        let sent = drain(&mut client);
        let fetch = parse(&sent[0]);
        let (next_mid, fresh) = (fetch.header.message_id, fetch.get_token().to_vec());
        assert_ne!(
            fresh, token,
            "a GET without Observe under the registration's token could deregister us"
        );
        assert_eq!(sent, vec![block_get(next_mid, &fresh, 0x12)]);
        // The server answers without Observe; the whole response carries the registration's.
        let last = content(
            MessageType::Acknowledgement,
            next_mid,
            &fresh,
            &[etag, (BLOCK2, vec![0x12])],
            &[2; 20],
        );
        client.handle_datagram(t0, &last);
        let got = responses(events(&mut client));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, token);
        assert_eq!((got[0].1.observe, got[0].1.payload.len()), (Some(5), 84));
        assert_eq!(client.observations(), 1);
        // And the notifications that follow arrive under the registration's token.
        let notification = content(
            MessageType::NonConfirmable,
            0x7002,
            &token,
            &[(OBSERVE, vec![6])],
            b"x",
        );
        client.handle_datagram(t0, &notification);
        let got = responses(events(&mut client));
        assert_eq!(
            got.iter()
                .map(|(t, r)| (t.clone(), r.observe))
                .collect::<Vec<_>>(),
            vec![(token, Some(6))]
        );
    }

    #[test]
    fn a_newer_notification_wins_over_the_fetch_of_an_older_one() {
        let t0 = Instant::now();
        let (mut client, token) = observing(32, t0);
        // Notification A (CON, Observe 6): acknowledged first, then block 1 is asked for.
        let etag_a = (ETAG, vec![0xa; 4]);
        let a = content(
            MessageType::Confirmable,
            0x7001,
            &token,
            &[(OBSERVE, vec![6]), etag_a.clone(), (BLOCK2, vec![0x0a])],
            &[1; 64],
        );
        client.handle_datagram(t0, &a);
        let sent = drain(&mut client);
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], vec![0x60, 0x00, 0x70, 0x01], "the empty ACK first");
        let fetch_a = parse(&sent[1]);
        // Notification B (NON, Observe 7) while A's block 1 is out: A's fetch is abandoned,
        // B's begins at once (nothing of ours is in flight any more).
        let etag_b = (ETAG, vec![0xb; 4]);
        let b = content(
            MessageType::NonConfirmable,
            0x7002,
            &token,
            &[(OBSERVE, vec![7]), etag_b.clone(), (BLOCK2, vec![0x0a])],
            &[3; 64],
        );
        client.handle_datagram(t0, &b);
        let sent = drain(&mut client);
        assert_eq!(sent.len(), 1);
        let fetch_b = parse(&sent[0]);
        let fresh_b = fetch_b.get_token().to_vec();
        assert!(fresh_b != token && fresh_b != fetch_a.get_token());
        assert_eq!(
            sent[0],
            block_get(fetch_b.header.message_id, &fresh_b, 0x12)
        );
        assert_eq!(client.pending_requests(), 1, "only B's fetch");
        // A's late answer completes nothing; an older notification (Observe 5) is dropped.
        let late_a = content(
            MessageType::Acknowledgement,
            fetch_a.header.message_id,
            fetch_a.get_token(),
            &[etag_a, (BLOCK2, vec![0x12])],
            &[2; 10],
        );
        client.handle_datagram(t0, &late_a);
        let older = content(
            MessageType::NonConfirmable,
            0x7003,
            &token,
            &[(OBSERVE, vec![5])],
            b"old",
        );
        client.handle_datagram(t0, &older);
        assert!(responses(events(&mut client)).is_empty());
        // B's last block: B, whole, and nothing of A in it.
        let last_b = content(
            MessageType::Acknowledgement,
            fetch_b.header.message_id,
            &fresh_b,
            &[etag_b, (BLOCK2, vec![0x12])],
            &[4; 10],
        );
        client.handle_datagram(t0, &last_b);
        let got = responses(events(&mut client));
        assert_eq!(got.len(), 1);
        assert_eq!((&got[0].0, got[0].1.observe), (&token, Some(7)));
        assert_eq!(got[0].1.payload, [[3u8; 64].as_slice(), &[4; 10]].concat());
    }

    #[test]
    fn a_fetch_that_times_out_ends_the_observation_under_its_token() {
        let t0 = Instant::now();
        let (mut client, token) = observing(33, t0);
        let notification = content(
            MessageType::NonConfirmable,
            0x7001,
            &token,
            &[(OBSERVE, vec![6]), (BLOCK2, vec![0x0a])],
            &[1; 64],
        );
        client.handle_datagram(t0, &notification);
        let fetch = parse(&drain(&mut client)[0]);
        // Acknowledged empty (a separate response would follow) and then nothing: at the
        // registration's request timeout the observation fails, reported under its token.
        client.handle_datagram(t0, &udp_empty_ack(fetch.header.message_id));
        client.handle_timeout(t0 + Duration::from_secs(60));
        let failed: Vec<_> = events(&mut client)
            .into_iter()
            .filter_map(|e| match e {
                ProtocolEvent::RequestFailed { token, error } => Some((token, error)),
                _ => None,
            })
            .collect();
        assert_eq!(
            failed,
            vec![(token, crate::proto::exchange::RequestError::TimedOut)]
        );
        assert_eq!(client.observations(), 0);
    }

    fn udp_empty_ack(mid: u16) -> Vec<u8> {
        crate::proto::wire::udp::empty_ack(mid).to_vec()
    }

    #[test]
    fn over_a_stream_notifications_in_blocks_arrive_whole_and_the_fetches_use_fresh_tokens() {
        use crate::proto::stream::StreamSession;
        let t0 = Instant::now();
        let mut client = StreamSession::new(KeepaliveConfig::default(), Rng::seeded(40), t0, 1152);
        let mut server = StreamSession::new(KeepaliveConfig::default(), Rng::seeded(41), t0, 1152);
        let version = |n: u8| -> Vec<u8> { (0..3000u32).map(|i| (i % 251) as u8 ^ n).collect() };
        let token = client.send_request(
            t0,
            &Request::get("/obs").observing(),
            Duration::from_secs(60),
        );
        let (mut current, mut registered, mut handled) = (0u8, None, 0);
        let mut fetch_tokens = Vec::new();
        let mut got = Vec::new();
        for round in 0..1000 {
            while let Some(bytes) = client.poll_transmit() {
                assert!(bytes.len() <= 1152);
                server.handle_bytes(t0, &bytes);
            }
            while let Some(event) = server.poll_event() {
                if let ProtocolEvent::Request(incoming) = event {
                    handled += 1;
                    let request = incoming.request();
                    let mut response =
                        Response::new(Status::Content).with_payload(version(current));
                    if request.observe == Some(0) {
                        registered = Some(request.token.clone());
                        response.observe = Some(1);
                    } else {
                        assert_eq!(request.observe, None, "a fetch carries no Observe");
                        fetch_tokens.push(request.token.clone());
                    }
                    server.respond(&incoming, &response);
                }
            }
            while let Some(bytes) = server.poll_transmit() {
                assert!(bytes.len() <= 1152);
                client.handle_bytes(t0, &bytes);
            }
            while let Some(event) = client.poll_event() {
                if let ProtocolEvent::Response {
                    token: to,
                    response,
                } = event
                {
                    assert_eq!(to, token);
                    got.push(*response);
                    if got.len() < 3 {
                        // The next version, notified as the first block.
                        current += 1;
                        let mut notification =
                            Response::new(Status::Content).with_payload(version(current));
                        notification.observe = Some(1 + u32::from(current));
                        server.notify(registered.as_deref().unwrap(), &notification);
                    }
                }
            }
            if got.len() == 3 {
                assert!(round < 999);
                break;
            }
        }
        assert_eq!(registered.as_deref(), Some(token.as_slice()));
        let payloads: Vec<_> = got.iter().map(|r| r.payload.clone()).collect();
        assert_eq!(payloads, vec![version(0), version(1), version(2)]);
        assert_eq!(
            got.iter().map(|r| r.observe).collect::<Vec<_>>(),
            vec![Some(1), Some(2), Some(3)]
        );
        assert!(fetch_tokens.iter().all(|t| *t != token));
        // The registration's response and each notification: one handler run for the
        // registration, one for each notification's block 1 (block 2 is stored).
        assert_eq!(handled, 3);
        assert_eq!(client.observations(), 1);
    }
}
