//! Load for `cargo xtask bench control`: registers N nodes with a running `burrow control
//! serve` (teams of `team` nodes, each team allowed to reach itself), opens the map streams of
//! one team and of a second one, moves one node of the first team, and measures how long until
//! every other member of its team has heard, and how many bytes that took. The second team
//! must hear nothing: the change costs work for the affected nodes only.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde::Serialize;

use burrow::control::store::AuthKeySpec;
use burrow::control::{MapMessage, RegisterResponse};

/// What one run measured.
#[derive(Debug, Serialize)]
pub struct ControlLoad {
    /// Nodes registered.
    pub nodes: usize,
    /// Team size (the nodes one change affects, plus the mover).
    pub team: usize,
    /// Wall time to register every node.
    pub register_s: f64,
    /// From the endpoint update to the last affected node hearing of it.
    pub propagate_ms: f64,
    /// The same, per replica (the affected streams are spread over the replicas in turn;
    /// the change is posted to the first).
    pub per_replica_ms: Vec<f64>,
    /// Bytes the affected streams received for the change.
    pub propagate_bytes: u64,
    /// Affected nodes that heard (must be team − 1).
    pub heard: usize,
    /// Unaffected streams that heard anything (must be 0).
    pub unaffected_heard: usize,
}

/// The policy: each team reaches itself.
pub fn policy(teams: usize) -> String {
    let rules: Vec<String> = (0..teams)
        .map(|t| format!(r#"{{ "action": "accept", "src": ["team{t}"], "dst": ["team{t}:*"] }}"#))
        .collect();
    format!("{{ \"acls\": [ {} ] }}", rules.join(",\n"))
}

type Stream = std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

async fn open(http: &reqwest::Client, url: &str, secret: &str) -> Result<Stream> {
    let r = http
        .get(format!("{url}/machine/map"))
        .bearer_auth(secret)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("map stream refused: {}", r.status());
    }
    Ok(Box::pin(r.bytes_stream()))
}

/// Reads until one whole map message; returns it and the bytes read for it.
async fn next(stream: &mut Stream, buf: &mut String) -> Result<(MapMessage, usize)> {
    let mut read = 0;
    loop {
        if let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                return Ok((serde_json::from_str(data)?, read));
            }
            continue;
        }
        let chunk = stream.next().await.context("stream ended")??;
        read += chunk.len();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Runs the load against the replicas `urls` (comma-separated) whose database is `db`.
pub async fn run(urls: &str, db: &str, nodes: usize, team: usize) -> Result<ControlLoad> {
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let teams = nodes.div_ceil(team);
    let store = burrow::control::open_store(db).await?;
    let keys: Vec<String> = (0..teams)
        .map(|t| {
            store.create_auth_key(&AuthKeySpec {
                user: format!("team{t}"),
                reusable: true,
                expires_at: None,
                tags: Vec::new(),
            })
        })
        .collect::<Result<_, _>>()?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let started = Instant::now();
    let mut secrets = vec![String::new(); nodes];
    let mut rng =
        <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::seed_from_u64(7);
    let pubs: Vec<(burrow_wg::PrivateKey, String)> = (0..nodes)
        .map(|_| {
            let a = burrow_wg::PrivateKey::generate(&mut rng);
            let b = burrow_wg::PrivateKey::generate(&mut rng)
                .public_key()
                .to_base64();
            (a, b)
        })
        .collect();
    let results = futures::stream::iter(0..nodes)
        .map(|i| {
            let (http, key, (nk, dk)) = (http.clone(), keys[i / team].clone(), pubs[i].clone());
            let url = urls[i % urls.len()].clone();
            async move {
                // A node's registration: a challenge, then the body sealed with its key.
                let challenge: burrow::control::ChallengeResponse = http
                    .get(format!("{url}/machine/challenge"))
                    .send()
                    .await?
                    .json()
                    .await?;
                let body = burrow::control::RegisterBody {
                    auth_key: Some(key),
                    hostname: format!("n{i}"),
                    disco_key: dk,
                    ..Default::default()
                };
                let req = burrow::control::identity::seal_registration(&nk, &challenge, body)?;
                let r = http
                    .post(format!("{url}/machine/register"))
                    .json(&req)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("registration {i}: {}", r.status());
                }
                let reg: RegisterResponse = r.json().await?;
                Ok::<_, anyhow::Error>((i, reg.secret))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for r in results {
        let (i, s) = r?;
        secrets[i] = s;
    }
    let register_s = started.elapsed().as_secs_f64();

    // Streams of team 0 (affected) and team 1 (not), past their netmaps.
    let mut affected = Vec::new();
    for (k, s) in secrets.iter().take(team).skip(1).enumerate() {
        let replica = k % urls.len();
        let mut st = open(&http, &urls[replica], s).await?;
        let mut buf = String::new();
        next(&mut st, &mut buf).await?;
        affected.push((st, buf, replica));
    }
    let mut others = Vec::new();
    for (k, s) in secrets.iter().skip(team).take(team).enumerate() {
        let mut st = open(&http, &urls[k % urls.len()], s).await?;
        let mut buf = String::new();
        next(&mut st, &mut buf).await?;
        others.push((st, buf));
    }

    // Move node 0.
    let t0 = Instant::now();
    let r = http
        .post(format!("{}/machine/endpoints", urls[0]))
        .bearer_auth(&secrets[0])
        .json(&serde_json::json!({ "endpoints": ["198.51.100.9:41641"], "home_region": 1 }))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("endpoint update: {}", r.status());
    }
    let waits = affected.iter_mut().map(|(st, buf, replica)| async move {
        let (m, bytes) = tokio::time::timeout(Duration::from_secs(10), next(st, buf)).await??;
        Ok::<_, anyhow::Error>((
            matches!(m, MapMessage::Delta(burrow_control::Delta::PeerUpsert(_))),
            bytes,
            t0.elapsed(),
            *replica,
        ))
    });
    let got = futures::future::join_all(waits).await;
    let mut heard = 0;
    let mut bytes = 0u64;
    let mut last = Duration::ZERO;
    let mut per_replica = vec![Duration::ZERO; urls.len()];
    for g in got {
        let (ok, b, at, replica) = g?;
        if ok {
            heard += 1;
            bytes += b as u64;
            last = last.max(at);
            per_replica[replica] = per_replica[replica].max(at);
        }
    }
    // The other team: nothing within a second.
    let quiet = others.iter_mut().map(|(st, buf)| async move {
        tokio::time::timeout(Duration::from_secs(1), next(st, buf))
            .await
            .is_ok()
    });
    let unaffected_heard = futures::future::join_all(quiet)
        .await
        .into_iter()
        .filter(|h| *h)
        .count();
    Ok(ControlLoad {
        nodes,
        team,
        register_s,
        propagate_ms: last.as_secs_f64() * 1000.0,
        per_replica_ms: per_replica
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect(),
        propagate_bytes: bytes,
        heard,
        unaffected_heard,
    })
}
