//! TLS, mTLS, certificate rotation and bearer tokens on the real server over
//! real gRPC (tonic clients with rustls), with certificates made here by
//! rcgen; and the real binary refusing a public listen address without
//! security.
// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{TestServer, config, error_info, request, step};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tandem_compute::{Config, TlsFiles};
use tandem_proto::v1::compute_service_client::ComputeServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Generous bound for anything that waits on a reload (polled every
/// second): it guards against a hang and measures nothing.
const DEADLINE: Duration = Duration::from_secs(30);

// ---- certificates ----

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { pem: pem("CERTIFICATE", cert.der()), issuer: Issuer::new(params, key) }
    }

    fn leaf(&self, names: &[&str], eku: ExtendedKeyUsagePurpose, serial: u64) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("client"));
        params.extended_key_usages = vec![eku];
        params.serial_number = Some(serial.into());
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert: pem("CERTIFICATE", cert.der()), key: pem("PRIVATE KEY", &key.serialize_der()) }
    }

    fn server(&self, serial: u64) -> Leaf {
        self.leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, serial)
    }

    fn client(&self, serial: u64) -> Leaf {
        self.leaf(&["orchestrator"], ExtendedKeyUsagePurpose::ClientAuth, serial)
    }
}

/// A directory of its own under the system temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "tandem-security-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` atomically (a temp file renamed over it), as a
    /// certificate manager does.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        let path = self.path(name);
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- clients ----

/// A TLS endpoint for the server at `addr` (verified as "localhost"),
/// trusting `cas`, presenting `identity` if given.
fn tls_endpoint(addr: std::net::SocketAddr, cas: &[&str], identity: Option<&Leaf>) -> Endpoint {
    let mut tls =
        ClientTlsConfig::new().ca_certificates(cas.iter().map(Certificate::from_pem)).domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20))
        .tls_config(tls)
        .unwrap()
}

/// One sha256 call on `channel`.
async fn sha256(channel: Channel) -> Result<(), tonic::Status> {
    let mut c = ComputeServiceClient::new(channel);
    let resp = c.transform(request(vec![step("hash.sha256", &[])], b"abc")).await?.into_inner();
    assert_eq!(resp.output.len(), 32);
    Ok(())
}

/// A new connection to `endpoint` and one sha256 call on it; a failed
/// connect or call is the error's text.
async fn call_fresh(endpoint: &Endpoint) -> Result<(), String> {
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    sha256(channel).await.map_err(|st| format!("call: {st:?}"))
}

/// Waits until `f` is true, polling; panics naming `what` past [`DEADLINE`].
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < DEADLINE, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reloads(srv: &TestServer, what: &str, result: &str) -> u64 {
    srv.metrics.reloads.with_label_values(&[what, result]).get()
}

fn tls_config(dir: &Dir, leaf: &Leaf, client_ca: Option<&str>) -> Config {
    let files = TlsFiles {
        cert: dir.write("server.pem", &leaf.cert),
        key: dir.write("server-key.pem", &leaf.key),
        client_ca: client_ca.map(|ca| dir.write("client-ca.pem", ca)),
    };
    Config { tls: Some(files), ..config(2, 8) }
}

// ---- TLS ----

#[tokio::test]
async fn tls_serves_and_refuses_plaintext_and_untrusted_clients_cleanly() {
    let dir = Dir::new("tls");
    let ca = Ca::new("test CA");
    let srv = TestServer::start(tls_config(&dir, &ca.server(1), None)).await;
    let good = tls_endpoint(srv.addr, &[&ca.pem], None);
    call_fresh(&good).await.unwrap();

    // A plaintext gRPC client: the handshake fails, the call fails cleanly.
    let plain = Endpoint::from_shared(format!("http://{}", srv.addr)).unwrap().timeout(Duration::from_secs(20));
    let err = call_fresh(&plain).await.unwrap_err();
    eprintln!("plaintext client: {err}");
    assert!(err.starts_with("connect") || err.contains("transport error"), "{err}");
    eventually("the failed handshake is counted", async || srv.metrics.tls_handshake_failures.get() >= 1).await;

    // A client that trusts another CA refuses the server's certificate.
    let other = Ca::new("other CA");
    call_fresh(&tls_endpoint(srv.addr, &[&other.pem], None)).await.unwrap_err();

    // The server goes on serving good clients.
    call_fresh(&good).await.unwrap();
    srv.stop().await;
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let dir = Dir::new("mtls");
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let other_ca = Ca::new("other client CA");
    let srv = TestServer::start(tls_config(&dir, &server_ca.server(1), Some(&client_ca.pem))).await;
    let with = |leaf: Option<&Leaf>| tls_endpoint(srv.addr, &[&server_ca.pem], leaf);
    let client = client_ca.client(10);
    let stranger = other_ca.client(11);

    call_fresh(&with(Some(&client))).await.unwrap();
    let err = call_fresh(&with(None)).await.unwrap_err();
    eprintln!("no client certificate: {err}");
    let err = call_fresh(&with(Some(&stranger))).await.unwrap_err();
    eprintln!("another CA's client certificate: {err}");
    eventually("both refused handshakes are counted", async || srv.metrics.tls_handshake_failures.get() >= 2).await;
    call_fresh(&with(Some(&client))).await.unwrap();

    // The client CA file rotates too: now only the other CA's clients pass.
    dir.write("client-ca.pem", &other_ca.pem);
    eventually("the new client CA is loaded", async || reloads(&srv, "tls", "ok") >= 1).await;
    call_fresh(&with(Some(&stranger))).await.unwrap();
    call_fresh(&with(Some(&client))).await.unwrap_err();
    srv.stop().await;
}

/// Rotation: the certificate and key files are replaced (another serial,
/// from another CA) while two loops call, one on a connection it keeps and
/// one on a new connection each time. No call fails; new connections get
/// the new certificate; a bad file later keeps it.
#[tokio::test]
async fn certificate_rotation_needs_no_restart_and_fails_no_call() {
    let dir = Dir::new("rotation");
    let (ca1, ca2) = (Ca::new("CA one"), Ca::new("CA two"));
    let srv = TestServer::start(tls_config(&dir, &ca1.server(1), None)).await;
    let only1 = tls_endpoint(srv.addr, &[&ca1.pem], None);
    let only2 = tls_endpoint(srv.addr, &[&ca2.pem], None);
    let both = tls_endpoint(srv.addr, &[&ca1.pem, &ca2.pem], None);
    call_fresh(&only1).await.unwrap();
    call_fresh(&only2).await.unwrap_err();

    let stop = Arc::new(AtomicBool::new(false));
    let calls = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let kept = both.connect().await.unwrap();
    let (stop_a, calls_a) = (stop.clone(), calls[0].clone());
    let kept_loop = tokio::spawn(async move {
        let mut failures = Vec::new();
        while !stop_a.load(Ordering::Relaxed) {
            if let Err(st) = sha256(kept.clone()).await {
                failures.push(format!("{st:?}"));
            }
            calls_a.fetch_add(1, Ordering::Relaxed);
        }
        failures
    });
    let (stop_b, calls_b, fresh) = (stop.clone(), calls[1].clone(), both.clone());
    let fresh_loop = tokio::spawn(async move {
        let mut failures = Vec::new();
        while !stop_b.load(Ordering::Relaxed) {
            if let Err(e) = call_fresh(&fresh).await {
                failures.push(e);
            }
            calls_b.fetch_add(1, Ordering::Relaxed);
        }
        failures
    });
    let at_least = |n: u64| {
        let calls = calls.clone();
        async move || calls.iter().all(|c| c.load(Ordering::Relaxed) >= n)
    };
    eventually("both loops call", at_least(3)).await;

    let new = ca2.server(2);
    dir.write("server-key.pem", &new.key);
    dir.write("server.pem", &new.cert);
    eventually("the new certificate is loaded", async || reloads(&srv, "tls", "ok") >= 1).await;
    let before = calls.iter().map(|c| c.load(Ordering::Relaxed)).max().unwrap();
    eventually("both loops call on after the rotation", at_least(before + 3)).await;
    stop.store(true, Ordering::Relaxed);
    let kept_failures = kept_loop.await.unwrap();
    let fresh_failures = fresh_loop.await.unwrap();
    assert!(kept_failures.is_empty(), "calls on the kept connection failed: {kept_failures:?}");
    assert!(fresh_failures.is_empty(), "calls on new connections failed: {fresh_failures:?}");

    // New connections see the new certificate (from CA two), not the old one.
    call_fresh(&only2).await.unwrap();
    call_fresh(&only1).await.unwrap_err();

    // A bad new certificate file is refused and the current one stays.
    // (The rotation above may have met the new key with the old certificate
    // once, and refused that pair too: count from here.)
    let errors = reloads(&srv, "tls", "error");
    dir.write("server.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n");
    eventually("the bad file is refused", async || reloads(&srv, "tls", "error") > errors).await;
    call_fresh(&only2).await.unwrap();
    // So is a key that does not match the certificate.
    dir.write("server.pem", &new.cert);
    dir.write("server-key.pem", &ca2.server(3).key);
    eventually("the mismatched key is refused", async || reloads(&srv, "tls", "error") > errors + 1).await;
    call_fresh(&only2).await.unwrap();
    srv.stop().await;
}

// ---- tokens ----

const TOKEN: &str = "tdm_orchestrator_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

fn with_auth(value: &str) -> tonic::Request<tandem_proto::v1::TransformRequest> {
    let mut req = tonic::Request::new(request(vec![step("hash.sha256", &[])], b"abc"));
    req.metadata_mut().insert("authorization", value.parse().unwrap());
    req
}

fn assert_unauthenticated(st: &tonic::Status, message: &str) {
    assert_eq!(st.code(), tonic::Code::Unauthenticated, "{st:?}");
    assert_eq!(st.message(), message);
    let (reason, domain, md) = error_info(st);
    assert_eq!(reason, "UNAUTHENTICATED");
    assert_eq!(domain, "tandem.dev");
    assert_eq!(md["field"], "authorization");
    assert!(!format!("{st:?}").contains("tdm_"), "no token echoed: {st:?}");
}

#[tokio::test]
async fn bearer_tokens_are_required_on_compute_calls_only() {
    let dir = Dir::new("tokens");
    let file = dir.write("tokens", &format!("# accepted compute tokens\n\n{TOKEN}\ntdm_second_x\n"));
    let srv = TestServer::start(Config { token_file: Some(file), ..config(2, 8) }).await;
    let mut c = srv.client().await;

    c.transform(with_auth(&format!("Bearer {TOKEN}"))).await.unwrap();
    c.transform(with_auth("Bearer tdm_second_x")).await.unwrap();
    c.list_ops(with_auth(&format!("Bearer {TOKEN}")).map(|_| tandem_proto::v1::ListOpsRequest {})).await.unwrap();

    let st = c.transform(request(vec![step("hash.sha256", &[])], b"abc")).await.unwrap_err();
    assert_unauthenticated(&st, "the call has no authorization metadata: send \"authorization: Bearer <token>\"");
    let st = c.list_ops(tandem_proto::v1::ListOpsRequest {}).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unauthenticated);
    let st = c.transform(with_auth("Bearer tdm_orchestrator_wrong")).await.unwrap_err();
    assert_unauthenticated(&st, "the bearer token is not accepted");
    let st = c.transform(with_auth(&format!("Basic {TOKEN}"))).await.unwrap_err();
    assert_unauthenticated(&st, "authorization metadata is not \"Bearer <token>\"");
    let st = c.transform(with_auth(TOKEN)).await.unwrap_err();
    assert_unauthenticated(&st, "authorization metadata is not \"Bearer <token>\"");
    let st = c.transform(with_auth("Bearer")).await.unwrap_err();
    assert_unauthenticated(&st, "authorization metadata is not \"Bearer <token>\"");
    let mut bin = tonic::Request::new(request(vec![step("hash.sha256", &[])], b"abc"));
    bin.metadata_mut().insert_bin("authorization-bin", tonic::metadata::MetadataValue::from_bytes(TOKEN.as_bytes()));
    let st = c.transform(bin).await.unwrap_err();
    assert_unauthenticated(
        &st,
        "binary metadata authorization-bin is not accepted: send the token as \"authorization: Bearer <token>\"",
    );
    // Long (under HTTP/2's 16 KiB for all metadata): refused with the limit.
    let st = c.transform(with_auth(&format!("Bearer {}", "x".repeat(8000)))).await.unwrap_err();
    assert_unauthenticated(&st, "authorization metadata is 8007 bytes, longer than the limit of 1024 bytes");
    let (_, _, md) = error_info(&st);
    assert_eq!((md["limit"].as_str(), md["actual"].as_str()), ("1024", "8007"));
    assert_eq!(srv.metrics.unauthenticated.get(), 8);

    // Over HTTP/2's 16 KiB header list limit (20 KiB, 1 MiB): refused by
    // HTTP/2 itself, cleanly (a status, no echo); the server serves the
    // next call.
    for n in [20_000, 1 << 20] {
        let st = c.transform(with_auth(&format!("Bearer {}", "x".repeat(n)))).await.unwrap_err();
        eprintln!("{n} bytes of authorization: {st:?}");
        assert_ne!(st.code(), tonic::Code::Ok);
        assert!(st.message().len() < 2000, "no echo of the huge value: {} bytes", st.message().len());
        c = srv.client().await;
        c.transform(with_auth(&format!("Bearer {TOKEN}"))).await.unwrap();
    }

    // Health and reflection stay open.
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let channel = Endpoint::from_shared(format!("http://{}", srv.addr)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let r = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(r.status, ServingStatus::Serving as i32);
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        ServerReflectionClient::new(channel).server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap();
    assert!(stream.get_mut().message().await.unwrap().is_some());
    srv.stop().await;
}

#[tokio::test]
async fn token_file_changes_take_effect_without_restart() {
    let dir = Dir::new("token-reload");
    let file = dir.write("tokens", "tdm_old_aaaa\n");
    let srv = TestServer::start(Config { token_file: Some(file), ..config(2, 8) }).await;
    let mut c = srv.client().await;
    c.transform(with_auth("Bearer tdm_old_aaaa")).await.unwrap();

    dir.write("tokens", "# rotated\ntdm_new_bbbb\n");
    eventually("the new token is accepted", async || {
        c.clone().transform(with_auth("Bearer tdm_new_bbbb")).await.is_ok()
    })
    .await;
    let st = c.transform(with_auth("Bearer tdm_old_aaaa")).await.unwrap_err();
    assert_unauthenticated(&st, "the bearer token is not accepted");
    assert_eq!(reloads(&srv, "tokens", "ok"), 1);

    // A file that no longer parses (here: no token left) keeps the tokens.
    dir.write("tokens", "# nothing here\n");
    eventually("the empty file is refused", async || reloads(&srv, "tokens", "error") >= 1).await;
    c.transform(with_auth("Bearer tdm_new_bbbb")).await.unwrap();
    srv.stop().await;
}

// ---- the binary: refusal and --insecure ----

/// A `tandem-compute` process, killed if a failed test leaves it running.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `tandem-compute` with `env` until its first log line; returns the
/// process and that line.
fn spawn(env: &[(&str, &str)]) -> (Proc, BufReader<std::process::ChildStderr>, serde_json::Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem-compute"));
    cmd.env("TANDEM_COMPUTE_METRICS_LISTEN", "")
        .env("TANDEM_COMPUTE_WORKERS", "1")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for var in ["TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA", "TOKEN_FILE", "INSECURE"] {
        cmd.env_remove(format!("TANDEM_COMPUTE_{var}"));
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let first = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (Proc(child), stderr, first)
}

fn next_line(stderr: &mut BufReader<std::process::ChildStderr>) -> serde_json::Value {
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn listen_port(startup: &serde_json::Value) -> u16 {
    assert_eq!(startup["fields"]["message"], "tandem-compute listening", "{startup}");
    let listen: std::net::SocketAddr = startup["fields"]["listen"].as_str().unwrap().parse().unwrap();
    listen.port()
}

/// Waits for a refused start to exit; returns the error line it logged.
fn refused(env: &[(&str, &str)]) -> String {
    let (mut child, _stderr, first) = spawn(env);
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "{first}");
    assert_eq!(first["level"], "ERROR", "{first}");
    assert_eq!(first["fields"]["message"], "not starting", "{first}");
    first["fields"]["error"].as_str().unwrap().to_owned()
}

#[test]
fn a_public_listen_address_without_security_refuses_to_start() {
    let dir = Dir::new("refuse");
    let ca = Ca::new("CA");
    let leaf = ca.server(1);
    let cert = dir.write("server.pem", &leaf.cert);
    let key = dir.write("server-key.pem", &leaf.key);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let public = ("TANDEM_COMPUTE_LISTEN", "0.0.0.0:0");

    let e = refused(&[public]);
    assert_eq!(
        e,
        "refusing to serve: --listen 0.0.0.0:0 is not loopback and has no TLS (--tls-cert and --tls-key) and \
         client authentication (--tls-client-ca or --token-file); set them, listen on loopback, or pass \
         --insecure to accept the risk"
    );
    let e = refused(&[public, ("TANDEM_COMPUTE_TLS_CERT", cert), ("TANDEM_COMPUTE_TLS_KEY", key)]);
    assert!(e.contains("has no client authentication (--tls-client-ca or --token-file);"), "{e}");
    assert!(!e.contains("--tls-cert and"), "{e}");
    let tokens = dir.write("tokens", "tdm_a_b\n");
    let e = refused(&[public, ("TANDEM_COMPUTE_TOKEN_FILE", tokens.to_str().unwrap())]);
    assert!(e.contains("has no TLS (--tls-cert and --tls-key);"), "{e}");
    let e = refused(&[("TANDEM_COMPUTE_LISTEN", "[::]:0"), ("TANDEM_COMPUTE_TLS_KEY", key)]);
    assert_eq!(e, "--tls-key needs --tls-cert");
}

/// SIGTERM, then waits for a clean exit without blocking the runtime (so
/// the test's client connections close and the drain has nothing to wait
/// for); kills the process past [`DEADLINE`].
async fn stop(mut child: Proc) {
    Command::new("kill").arg("-TERM").arg(child.0.id().to_string()).status().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        // Past it, the drop kills the process.
        assert!(start.elapsed() < DEADLINE, "no exit {DEADLINE:?} after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn insecure_starts_on_a_public_address_with_a_warning() {
    let (child, mut stderr, startup) =
        spawn(&[("TANDEM_COMPUTE_LISTEN", "0.0.0.0:0"), ("TANDEM_COMPUTE_INSECURE", "true")]);
    let port = listen_port(&startup);
    assert_eq!(startup["fields"]["tls"], "off");
    let warning = next_line(&mut stderr);
    assert_eq!(warning["level"], "WARN", "{warning}");
    let msg = warning["fields"]["message"].as_str().unwrap();
    assert!(msg.starts_with("INSECURE: --listen 0.0.0.0:0 is not loopback"), "{msg}");
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    sha256(channel).await.unwrap();
    stop(child).await;
}

/// The binary with TLS, a client CA and a token file from the environment,
/// on a public address: no warning, and a call needs all three.
#[tokio::test]
async fn a_secured_public_listen_serves_mtls_with_tokens() {
    let dir = Dir::new("binary-secure");
    let (ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let leaf = ca.server(1);
    let path = |p: PathBuf| p.to_str().unwrap().to_owned();
    let cert = path(dir.write("server.pem", &leaf.cert));
    let key = path(dir.write("server-key.pem", &leaf.key));
    let cca = path(dir.write("client-ca.pem", &client_ca.pem));
    let tokens = path(dir.write("tokens", &format!("{TOKEN}\n")));
    let (child, mut stderr, startup) = spawn(&[
        ("TANDEM_COMPUTE_LISTEN", "0.0.0.0:0"),
        ("TANDEM_COMPUTE_TLS_CERT", &cert),
        ("TANDEM_COMPUTE_TLS_KEY", &key),
        ("TANDEM_COMPUTE_TLS_CLIENT_CA", &cca),
        ("TANDEM_COMPUTE_TOKEN_FILE", &tokens),
    ]);
    let port = listen_port(&startup);
    assert_eq!(startup["fields"]["tls"], "mtls");
    assert_eq!(startup["fields"]["token_auth"], true);
    assert_eq!(startup["fields"]["tokens"], 1);
    assert_eq!(startup["fields"]["cert_sha256"].as_str().unwrap().len(), 64);
    // Only the certificate and token load lines follow: no warning.
    for _ in 0..2 {
        let line = next_line(&mut stderr);
        assert_eq!(line["level"], "INFO", "{line}");
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let channel = tls_endpoint(addr, &[&ca.pem], Some(&client_ca.client(5))).connect().await.unwrap();
    let mut c = ComputeServiceClient::new(channel);
    c.transform(with_auth(&format!("Bearer {TOKEN}"))).await.unwrap();
    let st = c.transform(request(vec![step("hash.sha256", &[])], b"abc")).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unauthenticated);
    call_fresh(&tls_endpoint(addr, &[&ca.pem], None)).await.unwrap_err();
    drop(c);
    stop(child).await;
}
