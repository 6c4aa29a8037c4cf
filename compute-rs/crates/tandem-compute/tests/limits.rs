//! Limits over real gRPC: request size at limit − 1 / limit / limit + 1
//! (plain and gRPC-compressed), bombs, corrupt images, bad params, batch size.

mod common;

use common::{TestServer, error_info, request, step};
use prost::Message;
use tandem_compute::Config;
use tandem_core::Limits;
use tandem_proto::v1;
use tonic::codec::CompressionEncoding;

const LIMIT: u64 = 100_000;

fn small_config() -> Config {
    Config {
        limits: Limits {
            workers: 2,
            queue_depth: 8,
            max_request_bytes: LIMIT,
            max_batch_items: 10,
            ..Limits::default()
        },
        enable_debug_ops: true,
        ..Config::default()
    }
}

/// A sha256 request whose encoded size is exactly `size` bytes.
fn request_of_size(size: u64) -> v1::TransformRequest {
    let mut req = request(vec![step("hash.sha256", &[])], b"");
    let mut n = size - req.encoded_len() as u64;
    loop {
        req.input = vec![7u8; n as usize];
        let len = req.encoded_len() as u64;
        if len == size {
            return req;
        }
        assert!(len > size, "sizes only shrink from here");
        n -= len - size;
    }
}

#[tokio::test]
async fn request_size_at_the_limit() {
    let srv = TestServer::start(small_config()).await;
    let mut c = srv.client().await;
    c.transform(request_of_size(LIMIT - 1)).await.expect("limit - 1 is accepted");
    c.transform(request_of_size(LIMIT)).await.expect("limit is accepted");
    let st = c.transform(request_of_size(LIMIT + 1)).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    assert_eq!(st.message(), format!("request is {} bytes, more than the limit of {LIMIT} bytes", LIMIT + 1));
    let (reason, _, md) = error_info(&st);
    assert_eq!(reason, "PAYLOAD_TOO_LARGE");
    assert_eq!(md["limit"], LIMIT.to_string());
    assert_eq!(md["actual"], (LIMIT + 1).to_string());
    // Still serving.
    c.transform(request_of_size(1000)).await.expect("serves after an oversized request");
    srv.stop().await;
}

#[tokio::test]
async fn compressed_request_inflating_past_the_limit() {
    let srv = TestServer::start(small_config()).await;
    for enc in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut c = srv.client().await.send_compressed(enc).accept_compressed(enc);
        // Within the limit once decompressed: fine.
        c.transform(request_of_size(LIMIT)).await.expect("compressed request at the limit");
        // 1 MiB of zeros: a few hundred bytes compressed, 10 × the limit inflated.
        let mut req = request(vec![step("hash.sha256", &[])], &[]);
        req.input = vec![0u8; 1 << 20];
        let st = c.transform(req).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{enc:?}: {st:?}");
        let (reason, _, md) = error_info(&st);
        assert_eq!(reason, "PAYLOAD_TOO_LARGE");
        assert_eq!(md["limit"], LIMIT.to_string());
        c.transform(request_of_size(1000)).await.expect("serves after a compressed bomb");
    }
    srv.stop().await;
}

#[tokio::test]
async fn decompression_bomb_is_capped() {
    let srv = TestServer::start(small_config()).await;
    let mut c = srv.client().await;
    for fmt in ["zstd", "gzip", "lz4"] {
        // 64 KiB of zeros compressed: small enough to send, 64 × the cap.
        let comp = c
            .transform(request(vec![step(&format!("compress.{fmt}"), &[])], &vec![0u8; 64 << 10]))
            .await
            .unwrap()
            .into_inner()
            .output;
        assert!(comp.len() < 2048, "{fmt}: {} bytes", comp.len());
        let st = c
            .transform(request(vec![step(&format!("decompress.{fmt}"), &[("max_output_bytes", "1024")])], &comp))
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        let (reason, _, md) = error_info(&st);
        assert_eq!(reason, "OUTPUT_TOO_LARGE", "{fmt}");
        assert_eq!(md["limit"], "1024");
        assert_eq!(md["param"], "max_output_bytes");
        assert_eq!(md["step"], "0");
        // At the cap exactly: fine.
        let out = c
            .transform(request(vec![step(&format!("decompress.{fmt}"), &[("max_output_bytes", "65536")])], &comp))
            .await
            .unwrap()
            .into_inner()
            .output;
        assert_eq!(out.len(), 64 << 10);
    }
    // The cap itself is bounded by max_output_bytes.
    let st = c
        .transform(request(vec![step("decompress.zstd", &[("max_output_bytes", "999999999999")])], b"x"))
        .await
        .unwrap_err();
    assert_eq!(error_info(&st).0, "PARAM_OUT_OF_RANGE");
    srv.stop().await;
}

#[tokio::test]
async fn corrupt_and_oversized_images() {
    let srv = TestServer::start(small_config()).await;
    let mut c = srv.client().await;
    let st =
        c.transform(request(vec![step("image.thumbnail", &[])], b"\x89PNG\r\n\x1a\nnot really")).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert_eq!(error_info(&st).0, "INPUT_CORRUPT");
    assert!(st.message().starts_with("step 0 (image.thumbnail): corrupt input: image:"), "{}", st.message());

    // A PNG header claiming 20000 × 20000.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&20000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    // An IDAT with a few bytes of a stored zlib stream, then IEND.
    let idat = b"IDAT\x78\x01\x01\x01\x00\xfe\xff\x00\x00\x01\x00\x01".to_vec();
    png.extend_from_slice(&((idat.len() - 4) as u32).to_be_bytes());
    png.extend_from_slice(&idat);
    png.extend_from_slice(&crc32(&idat).to_be_bytes());
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    let st = c.transform(request(vec![step("image.thumbnail", &[])], &png)).await.unwrap_err();
    let (reason, _, md) = error_info(&st);
    assert_eq!(reason, "OUTPUT_TOO_LARGE", "{}", st.message());
    assert_eq!(md["actual"], "20000");
    srv.stop().await;
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[tokio::test]
async fn bad_params_name_step_param_and_range() {
    let srv = TestServer::start(small_config()).await;
    let mut c = srv.client().await;
    let st = c
        .transform(request(vec![step("hash.sha256", &[]), step("compress.zstd", &[("level", "40")])], b"x"))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert_eq!(st.message(), "step 1 (compress.zstd): param \"level\" = 40 is out of range [1, 22]");
    let (reason, _, md) = error_info(&st);
    assert_eq!(reason, "PARAM_OUT_OF_RANGE");
    assert_eq!(md["step"], "1");
    assert_eq!(md["op"], "compress.zstd");
    assert_eq!(md["param"], "level");
    assert_eq!(md["limit"], "[1, 22]");
    assert_eq!(md["actual"], "40");

    let st = c.transform(request(vec![step("compress.gzip", &[("speed", "1")])], b"x")).await.unwrap_err();
    assert_eq!(error_info(&st).0, "PARAM_INVALID");
    assert!(st.message().contains("unknown param (known: level)"), "{}", st.message());
    srv.stop().await;
}

#[tokio::test]
async fn too_many_steps_and_batch_items() {
    let srv = TestServer::start(small_config()).await;
    let mut c = srv.client().await;
    let st = c.transform(request(vec![step("hash.sha256", &[]); 17], b"x")).await.unwrap_err();
    let (reason, _, md) = error_info(&st);
    assert_eq!(reason, "REQUEST_INVALID");
    assert_eq!(md["limit"], "16");
    assert_eq!(md["actual"], "17");

    let items = vec![request(vec![step("hash.sha256", &[])], b"x"); 11];
    let st = c.transform_batch(v1::TransformBatchRequest { items }).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    let (reason, _, md) = error_info(&st);
    assert_eq!(reason, "REQUEST_INVALID");
    assert_eq!(md["field"], "items");
    let items = vec![request(vec![step("hash.sha256", &[])], b"x"); 10];
    let resp = c.transform_batch(v1::TransformBatchRequest { items }).await.unwrap().into_inner();
    assert_eq!(resp.results.len(), 10);
    srv.stop().await;
}

/// The identifier limits at compute's own API edge (docs/ARCHITECTURE.md
/// "Identifiers"), limit − 1 / limit / limit + 1 over real gRPC, for a
/// Transform and for a TransformBatch item: REQUEST_INVALID naming the
/// field and the limit, before any op lookup.
#[tokio::test]
async fn identifiers_at_the_limit() {
    let srv = TestServer::start(small_config()).await;
    let mut c = srv.client().await;
    let with_job = |job_id: &str| v1::TransformRequest {
        job_id: job_id.to_owned(),
        ..request(vec![step("hash.sha256", &[])], b"x")
    };
    for n in [1, 63, 64] {
        c.transform(with_job(&"j".repeat(n))).await.unwrap_or_else(|e| panic!("job id of {n} bytes: {e:?}"));
    }
    let refused = |st: tonic::Status, field: &str, limit: &str| {
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
        let (reason, _, md) = error_info(&st);
        assert_eq!(
            (reason.as_str(), md["field"].as_str(), md["limit"].as_str()),
            ("REQUEST_INVALID", field, limit),
            "{st:?}"
        );
        st.message().to_owned()
    };
    let msg = refused(c.transform(with_job(&"j".repeat(65))).await.unwrap_err(), "job_id", "64");
    assert!(msg.starts_with("job_id: is 65 bytes, longer than 64 (got \""), "{msg}");
    for id in ["a.b", "*", "a b", "../..", "a\n"] {
        refused(c.transform(with_job(id)).await.unwrap_err(), "job_id", "64");
    }

    let one = |s: v1::Step| request(vec![step("hash.sha256", &[]), s], b"x");
    for n in [127, 128] {
        let st = c.transform(one(step(&"x".repeat(n), &[]))).await.unwrap_err();
        assert_eq!(error_info(&st).0, "UNKNOWN_OP", "{n}: {st:?}");
    }
    let msg = refused(c.transform(one(step(&"x".repeat(129), &[]))).await.unwrap_err(), "steps[1].op", "128");
    assert!(msg.starts_with("steps[1].op: is 129 bytes, longer than 128"), "{msg}");
    refused(c.transform(one(step("hash.*", &[]))).await.unwrap_err(), "steps[1].op", "128");
    let name = "p".repeat(65);
    refused(c.transform(one(step("hash.sha256", &[(&name, "1")]))).await.unwrap_err(), "steps[1].params", "64");
    let value = "0".repeat(4096) + "3";
    let st = c.transform(one(step("compress.zstd", &[("level", &value)]))).await.unwrap_err();
    refused(st, "steps[1].params[level]", "4096");
    let value = "0".repeat(4095) + "3";
    c.transform(one(step("compress.zstd", &[("level", &value)]))).await.expect("4096 bytes is the limit");

    // A batch: each item is checked on its own, with the same fields.
    let items = vec![with_job("ok"), with_job("bad job"), one(step("hash.>", &[]))];
    let resp = c.transform_batch(v1::TransformBatchRequest { items }).await.unwrap().into_inner();
    let fields: Vec<Option<String>> = resp
        .results
        .iter()
        .map(|r| match &r.outcome {
            Some(v1::transform_result::Outcome::Error(e)) => {
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
                Some(e.metadata["field"].clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(fields, [None, Some("job_id".to_owned()), Some("steps[1].op".to_owned())]);
    srv.stop().await;
}
