//! `grpc.health.v1.Health` for Kubernetes `grpc:` probes and load balancers: SERVING
//! exactly when `/readyz` would answer 200 (`core::Herald::readiness`: store, broker,
//! not draining), asked afresh on every `Check`, so a drain shows as NOT_SERVING at
//! once. The service names answered are `""` (the server) and `herald.v1.Herald`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::core::Herald;

/// How often a `Watch` stream looks at readiness again.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Service names the health service knows.
const SERVICES: [&str; 2] = ["", "herald.v1.Herald"];

pub(crate) struct HealthService {
    pub(crate) herald: Arc<Herald>,
    /// Cancelled when the gRPC listener stops: `Watch` streams end then.
    pub(crate) stop: CancellationToken,
}

async fn serving(herald: &Herald) -> ServingStatus {
    if herald.is_draining() {
        return ServingStatus::NotServing;
    }
    if herald.readiness().await.is_ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !SERVICES.contains(&request.get_ref().service.as_str()) {
            return Err(Status::not_found("unknown service"));
        }
        Ok(Response::new(response(serving(&self.herald).await)))
    }

    type WatchStream = WatchStream;

    /// The status now, then each change, until the listener stops.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let herald = self.herald.clone();
        let stop = self.stop.clone();
        if !SERVICES.contains(&request.get_ref().service.as_str()) {
            let unknown =
                futures_util::stream::once(async { Ok(response(ServingStatus::ServiceUnknown)) });
            return Ok(Response::new(Box::pin(unknown)));
        }
        let stream = futures_util::stream::unfold(None, move |last| {
            let (herald, stop) = (herald.clone(), stop.clone());
            async move {
                if last.is_some() {
                    // Changes are looked for once a second, and the stream ends with
                    // the listener.
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => {
                                // A last change (the drain) goes out before the end.
                                let now = serving(&herald).await;
                                return (Some(now) != last)
                                    .then(|| (Ok(response(now)), Some(now)));
                            }
                            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                        }
                        let now = serving(&herald).await;
                        if Some(now) != last {
                            return Some((Ok(response(now)), Some(now)));
                        }
                    }
                }
                let now = serving(&herald).await;
                Some((Ok(response(now)), Some(now)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
