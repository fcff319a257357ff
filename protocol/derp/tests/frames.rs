//! Golden bytes for every DERP frame type (layouts from Tailscale's derp.go, as recorded in
//! shared/reference), round trips, and the incremental decoder over arbitrary splits.

use burrow_derp::frame::{types, MAX_FRAME_SIZE};
use burrow_derp::{Frame, FrameDecoder, FrameError, PeerGoneReason};
use proptest::prelude::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];
const K1_HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const K2_HEX: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn golden() -> Vec<(Frame<'static>, Vec<u8>)> {
    vec![
        (
            Frame::ServerKey { key: K1 },
            hex(&format!("01 00000028 44455250f09f9491 {K1_HEX}")),
        ),
        (
            Frame::ClientInfo {
                key: K1,
                nonce: [0x33; 24],
                sealed: b"box",
            },
            hex(&format!("02 0000003b {K1_HEX} {} 626f78", "33".repeat(24))),
        ),
        (
            Frame::ServerInfo {
                nonce: [0x44; 24],
                sealed: b"srv",
            },
            hex(&format!("03 0000001b {} 737276", "44".repeat(24))),
        ),
        (
            Frame::SendPacket {
                dst: K2,
                packet: b"hi",
            },
            hex(&format!("04 00000022 {K2_HEX} 6869")),
        ),
        (
            Frame::RecvPacket {
                src: K1,
                packet: b"hi",
            },
            hex(&format!("05 00000022 {K1_HEX} 6869")),
        ),
        (Frame::KeepAlive, hex("06 00000000")),
        (
            Frame::NotePreferred { preferred: true },
            hex("07 00000001 01"),
        ),
        (
            Frame::PeerGone {
                key: K1,
                reason: PeerGoneReason::NotHere,
            },
            hex(&format!("08 00000021 {K1_HEX} 01")),
        ),
        (
            Frame::PeerPresent {
                key: K2,
                endpoint: None,
                flags: None,
            },
            hex(&format!("09 00000020 {K2_HEX}")),
        ),
        (
            Frame::PeerPresent {
                key: K2,
                endpoint: Some("192.0.2.1:41641".parse().unwrap()),
                flags: Some(3),
            },
            hex(&format!(
                "09 00000033 {K2_HEX} 00000000000000000000ffffc0000201 a2a9 03"
            )),
        ),
        (
            Frame::ForwardPacket {
                src: K1,
                dst: K2,
                packet: b"x",
            },
            hex(&format!("0a 00000041 {K1_HEX} {K2_HEX} 78")),
        ),
        (Frame::WatchConns, hex("10 00000000")),
        (
            Frame::ClosePeer { key: K1 },
            hex(&format!("11 00000020 {K1_HEX}")),
        ),
        (
            Frame::Ping([1, 2, 3, 4, 5, 6, 7, 8]),
            hex("12 00000008 0102030405060708"),
        ),
        (
            Frame::Pong([1, 2, 3, 4, 5, 6, 7, 8]),
            hex("13 00000008 0102030405060708"),
        ),
        (
            Frame::Health { problem: "down" },
            hex("14 00000004 646f776e"),
        ),
        (
            Frame::Restarting {
                reconnect_in_ms: 500,
                try_for_ms: 10_000,
            },
            hex("15 00000008 000001f4 00002710"),
        ),
    ]
}

#[test]
fn every_frame_type_encodes_to_its_golden_bytes_and_back() {
    for (frame, bytes) in golden() {
        assert_eq!(frame.to_vec(), bytes, "{frame:?}");
        let mut d = FrameDecoder::new();
        d.extend(&bytes);
        let (t, payload) = d.next_frame().unwrap().unwrap();
        assert_eq!(Frame::decode(t, &payload).unwrap(), frame);
        assert!(d.next_frame().is_none());
    }
}

#[test]
fn magic_is_derp_and_key_emoji() {
    assert_eq!(&burrow_derp::frame::MAGIC, "DERP🔑".as_bytes());
}

#[test]
fn malformed_frames_are_typed_errors() {
    assert_eq!(
        Frame::decode(types::SERVER_KEY, &[0; 40]),
        Err(FrameError::BadMagic)
    );
    assert!(matches!(
        Frame::decode(types::SEND_PACKET, &[0; 31]),
        Err(FrameError::BadLength { .. })
    ));
    assert!(matches!(
        Frame::decode(types::PING, &[0; 7]),
        Err(FrameError::BadLength { .. })
    ));
    assert!(matches!(
        Frame::decode(types::NOTE_PREFERRED, &[]),
        Err(FrameError::BadLength { .. })
    ));
    assert!(
        matches!(
            Frame::decode(types::HEALTH, &[0xff]),
            Ok(Frame::Health { .. })
        ),
        "not UTF-8 is still a health message"
    );
    assert!(matches!(
        Frame::decode(0x7f, b"future"),
        Ok(Frame::Unknown {
            frame_type: 0x7f,
            ..
        })
    ));
    let mut d = FrameDecoder::new();
    d.extend(&[0x04, 0xff, 0xff, 0xff, 0xff]);
    assert!(matches!(
        d.next_frame(),
        Some(Err(FrameError::TooLarge {
            max: MAX_FRAME_SIZE,
            ..
        }))
    ));
}

proptest! {
    #[test]
    fn decoder_accepts_the_stream_split_anywhere(cuts in proptest::collection::vec(0usize..400, 0..20)) {
        let stream: Vec<u8> = golden().into_iter().flat_map(|(_, b)| b).collect();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort();
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for w in cuts.windows(2) {
            d.extend(&stream[w[0]..w[1]]);
            while let Some(f) = d.next_frame() {
                let (t, p) = f.unwrap();
                got.push((t, p.to_vec()));
            }
        }
        prop_assert_eq!(got.len(), golden().len());
        for ((t, p), (frame, _)) in got.iter().zip(golden()) {
            prop_assert_eq!(Frame::decode(*t, p).unwrap(), frame);
        }
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn decode_never_panics(t in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(f) = Frame::decode(t, &payload) {
            // Whatever decodes re-encodes to a frame that decodes the same.
            let bytes = f.to_vec();
            let again = Frame::decode(bytes[0], &bytes[5..]).unwrap();
            prop_assert_eq!(again, f);
        }
    }
}

/// Audit follow-up (derper memory): a drained decoder lets go of the room a large frame
/// needed, so an idle connection costs a few KiB, not 64 KiB.
#[test]
fn a_drained_decoder_keeps_no_large_buffer() {
    let big = Frame::SendPacket {
        dst: K1,
        packet: &[7u8; 60_000],
    }
    .to_vec();
    let mut d = FrameDecoder::new();
    for chunk in big.chunks(4096) {
        d.extend(chunk);
        while let Some(f) = d.next_frame() {
            let (t, payload) = f.unwrap();
            assert_eq!((t, payload.len()), (types::SEND_PACKET, 60_032));
        }
    }
    // A small frame afterwards, read whole: still nothing large kept once drained.
    d.extend(&Frame::KeepAlive.to_vec());
    assert!(d.next_frame().is_some());
    assert!(d.next_frame().is_none());
    assert_eq!(d.buffered(), 0);
    assert!(
        d.capacity() <= burrow_derp::frame::IDLE_DECODER_CAPACITY,
        "{} bytes kept",
        d.capacity()
    );
}
