//! TEMPORARY stub until the codecs land.
pub mod udp {
    pub fn ping(mid: u16) -> [u8; 4] { let m = mid.to_be_bytes(); [0x40, 0, m[0], m[1]] }
}
pub mod signal {
    pub enum Signal { Ping { custody: bool } }
    impl Signal { pub fn encode(&self, token: &[u8]) -> Vec<u8> { let Signal::Ping{..} = self; let mut v = vec![token.len() as u8, 0xe2]; v.extend_from_slice(token); v } }
}
