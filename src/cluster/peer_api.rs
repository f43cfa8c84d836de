//! The protocol between nodes, in one place: its paths, how a call is
//! signed (`signing.rs`), and the typed calls themselves. `http/internal.rs`
//! answers them; nothing else builds a call between nodes by hand.
//!
//! - `POST /internal/v1/appends`: outbox entries for mailboxes the callee
//!   owns (body: `outbox::encode`);
//! - `POST /internal/v1/watch`: tell me when this large group's stream moves;
//! - `POST /internal/v1/wake`: the stream moved on;
//! - `GET /v1/cluster`: the ring as the callee sees it ([`ClusterView`]),
//!   asked by a joining node, and by operators with the metrics token.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::client::CallError;
use super::{Cluster, Peer};

pub const APPENDS_PATH: &str = "/internal/v1/appends";
pub const WATCH_PATH: &str = "/internal/v1/watch";
pub const WAKE_PATH: &str = "/internal/v1/wake";
pub const VIEW_PATH: &str = "/v1/cluster";

/// The header carrying an internal call's signature.
pub const SIGNATURE_HEADER: &str = "x-carrier-signature";

/// The ring as one node sees it: the answer of `GET /v1/cluster`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterView {
    pub node_id: String,
    pub joined: bool,
    /// Whether what earlier views routed here has landed.
    pub settled: bool,
    pub epoch: u64,
    pub peers: Vec<PeerState>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PeerState {
    pub id: String,
    pub addr: String,
    /// In this node's serving view: `up` or `down`.
    pub state: String,
    /// By the leases: `held` or `lapsed`.
    pub lease: String,
}

/// Why a call between nodes did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the peer answered {0}")]
    Refused(StatusCode),
    #[error("the peer's answer is malformed: {0}")]
    Malformed(String),
}

impl Cluster {
    /// This node's view of the ring.
    pub fn view(&self) -> ClusterView {
        let serving = self.serving();
        let newest = self.newest();
        let peers = self
            .peers()
            .iter()
            .enumerate()
            .map(|(i, p)| PeerState {
                id: p.id.clone(),
                addr: p.addr.to_string(),
                state: if serving.live[i] { "up" } else { "down" }.into(),
                lease: if newest.live[i] { "held" } else { "lapsed" }.into(),
            })
            .collect();
        ClusterView {
            node_id: self.me().id.clone(),
            joined: self.joined(),
            settled: self.settled(),
            epoch: serving.epoch,
            peers,
        }
    }

    /// Pushes outbox entries to the node owning their mailboxes.
    pub async fn push_appends(
        &self,
        peer: &Peer,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        self.signed(peer.addr, Method::POST, APPENDS_PATH, body, timeout)
            .await
            .map(drop)
    }

    /// Asks a large group's owner to tell this node when its stream moves.
    pub async fn watch(
        &self,
        addr: SocketAddr,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        self.signed(addr, Method::POST, WATCH_PATH, body, timeout)
            .await
            .map(drop)
    }

    /// Tells a watching node that a stream moved on.
    pub async fn wake(
        &self,
        addr: SocketAddr,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(), PeerError> {
        self.signed(addr, Method::POST, WAKE_PATH, body, timeout)
            .await
            .map(drop)
    }

    /// The ring as `peer` sees it.
    pub async fn view_of(&self, peer: &Peer, timeout: Duration) -> Result<ClusterView, PeerError> {
        let body = self
            .signed(peer.addr, Method::GET, VIEW_PATH, Bytes::new(), timeout)
            .await?;
        serde_json::from_slice(&body).map_err(|e| PeerError::Malformed(e.to_string()))
    }

    /// One signed call; a 2xx answer's body.
    async fn signed(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let signature = self.sign_call(method.as_str(), path, &body);
        let signature = HeaderValue::from_str(&signature)
            .map_err(|_| PeerError::Malformed("this node's id is not a header value".into()))?;
        let header = (HeaderName::from_static(SIGNATURE_HEADER), signature);
        let answer = self
            .client
            .call(addr, method, path, &[header], body, timeout)
            .await?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(PeerError::Refused(answer.status))
        }
    }
}
