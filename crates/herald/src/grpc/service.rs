//! `herald.v1.Herald`: each method authenticates the call from its metadata,
//! charges its visitor, checks access, and hands the core what HTTP would hand it
//! (`core::Herald::publish`, the subscription core in `crate::subscribe`), in the
//! HTTP API's order (`api::dispatch`): authenticate, charge, route, authorize, parse.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;

use futures_util::Stream;
use tonic::{Code, Request, Response, Status};

use super::convert::{self, DraftLimits};
use super::metrics::{Call, GrpcMetrics};
use super::proto;
use super::status::{batch_error, status};
use crate::api::AppState;
use crate::auth::{Permission, Principal};
use crate::core::HISTORY_RETRY_AFTER;
use crate::core::publish::{PublishKind, PublishRequest};
use crate::error::ApiError;
use crate::hub::{CloseReason, Delivery, Subscription, Transport};
use crate::idempotency::{FingerprintBuilder, IdempotencyKey};
use crate::limits::{self, Admission, Charge, Refusal, Visitor};
use crate::model::{EventKind, Message, now_unix, topic};
use crate::subscribe::{Backlog, Filters, SlotGuard, SubscribeRequest};

/// Most messages in one `PublishBatch`.
pub(crate) const BATCH_MAX: usize = 1000;
/// Largest `PublishRequest.file`: a unary message is held whole in memory, so big
/// files go over HTTP, which streams them to the store.
pub(crate) const FILE_MAX: usize = 4 << 20;

/// A file sent in `PublishRequest.file`, uploaded as HTTP uploads a body.
struct FileUpload {
    bytes: bytes::Bytes,
    name: Option<String>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Message, Status>> + Send>>;

/// The service, over the same state the HTTP API uses.
#[derive(Clone)]
pub(crate) struct HeraldService {
    pub(crate) state: AppState,
    pub(crate) metrics: GrpcMetrics,
}

/// Who is calling: the authenticated principal and the visitor it is charged to.
struct Caller {
    principal: Principal,
    visitor: Visitor,
    /// The client's address (an `email`'s sender when not logged in).
    client_ip: IpAddr,
}

/// A refusal: the error, and when to retry if that applies.
struct Refused {
    error: ApiError,
    retry: Option<std::time::Duration>,
}

impl Refused {
    fn status(&self) -> Status {
        status(&self.error, self.retry)
    }
}

impl HeraldService {
    /// `error` as a refusal, with the retry delay HTTP would send in `Retry-After`.
    fn refused(&self, error: ApiError) -> Refused {
        let limits = &self.state.limits;
        let retry = if error == ApiError::PASSWORD_CHECKS_BUSY {
            limits.refused(limits::Limit::PasswordChecks);
            Some(std::time::Duration::from_secs(1))
        } else if error == ApiError::TOO_MANY_TOPICS {
            limits.refused(limits::Limit::GlobalTopics);
            Some(limits.replenish_interval())
        } else {
            (error.http == 429).then(|| limits.replenish_interval())
        };
        Refused { error, retry }
    }

    fn refusal(&self, refusal: Refusal, visitor: &Visitor) -> Refused {
        let limits = &self.state.limits;
        limits.refused(refusal.limit);
        Refused {
            retry: Some(limits.retry_after_refusal(&refusal, visitor)),
            error: ApiError::from(refusal),
        }
    }

    /// Authenticates the call from its `authorization` metadata; the peer address
    /// (or, from a trusted proxy with `behind-proxy`, the forwarded one) names the
    /// visitor.
    async fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Refused> {
        let peer = req
            .remote_addr()
            .map(|a| a.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let headers = req.metadata().clone().into_headers();
        let limits = &self.state.limits;
        let client_ip = limits.client_ip(peer, &headers);
        let principal = self
            .state
            .auth
            .authenticate(&headers, None, client_ip)
            .await
            .map_err(|e| self.refused(ApiError::from(e)))?;
        let visitor = limits.visitor(client_ip, principal.user_name());
        Ok(Caller {
            principal,
            visitor,
            client_ip,
        })
    }

    /// Charges the visitor for one call, as HTTP's dispatcher does.
    async fn charge(&self, visitor: &Visitor, charge: Charge) -> Result<Admission, Refused> {
        let limits = &self.state.limits;
        let admission = if limits.is_shared() {
            limits.admit_any(visitor, charge).await
        } else {
            limits.admit(visitor, charge)
        };
        admission.map_err(|r| self.refusal(r, visitor))
    }

    fn draft_limits(&self) -> DraftLimits {
        let config = self.state.herald.config();
        DraftLimits {
            size_limit: config.message_size_limit,
            delay_max_secs: i64::try_from(config.message_delay_limit.as_secs()).unwrap_or(i64::MAX),
            email_enabled: self.state.herald.emails_enabled(),
        }
    }

    /// One publish of a message or a sequence event, charged and settled; with an
    /// idempotency key, at most once per key (`crate::idempotency`).
    async fn publish_one(
        &self,
        caller: &Caller,
        topic: &str,
        key: Option<IdempotencyKey>,
        file: Option<FileUpload>,
        kind: impl FnOnce() -> Result<PublishKind, ApiError>,
    ) -> Result<Message, Refused> {
        let admission = self.charge(&caller.visitor, Charge::Publish).await?;
        let result = self.publish_checked(caller, topic, key, file, kind).await;
        self.state
            .limits
            .settle_message(&caller.visitor, admission, result.is_ok())
            .await;
        result.map_err(|e| self.refused(e))
    }

    async fn publish_checked(
        &self,
        caller: &Caller,
        topic: &str,
        key: Option<IdempotencyKey>,
        file: Option<FileUpload>,
        kind: impl FnOnce() -> Result<PublishKind, ApiError>,
    ) -> Result<Message, ApiError> {
        let topic = single_topic(topic)?;
        self.state
            .auth
            .authorize(&caller.principal, &topic, Permission::Write)?;
        let mut kind = kind()?;
        if let PublishKind::Message(draft) = &mut kind
            && let Some(email) = &mut draft.email
        {
            // ntfy's `visitor-email-limit-*`, charged once the request is valid (as HTTP).
            self.state.limits.admit_email(&caller.visitor).await?;
            email.sender = match caller.principal.user_name() {
                Some(name) => format!("user:{name}"),
                None => caller.client_ip.to_string(),
            };
        }
        let mut upload = None;
        if let (Some(file), PublishKind::Message(draft)) = (file, &mut kind) {
            let attachments = self
                .state
                .attachments
                .as_ref()
                .ok_or(ApiError::ATTACHMENTS_NOT_ALLOWED)?;
            let config = self.state.herald.config();
            let (delivery, message_expires) =
                crate::attachment::delivery_and_expiry(draft, config.cache_duration, now_unix());
            let request = crate::attachment::UploadRequest {
                visitor: limits::shared::visitor_name(&caller.visitor.key),
                name: file.name,
                content_length: Some(file.bytes.len() as u64),
                delivery,
                message_expires,
            };
            let pending = attachments
                .upload(
                    request,
                    file.bytes,
                    None::<&mut futures_util::stream::Empty<Result<bytes::Bytes, std::io::Error>>>,
                )
                .await?;
            draft.attachment = Some(pending.attachment().clone());
            upload = Some(pending);
        }
        let published = self
            .state
            .idempotency
            .publish(
                &self.state.herald,
                PublishRequest { topic, kind },
                key,
                crate::model::now_unix_ms(),
            )
            .await?;
        // A failed publish drops `upload`, which deletes its file; so does a replay.
        if let Some(upload) = upload
            && !published.replayed
        {
            upload.keep();
        }
        let m = published.event.message.clone();
        tracing::debug!(topic = %m.topic, id = %m.id, replayed = published.replayed, "published over gRPC");
        Ok(m)
    }

    /// The request's idempotency key (scoped to the caller's visitor, as HTTP's) with
    /// the fingerprint of everything else it asks for; the field is taken out of `req`.
    fn idempotency_key(
        caller: &Caller,
        req: &mut proto::PublishRequest,
    ) -> Result<Option<IdempotencyKey>, ApiError> {
        let key = std::mem::take(&mut req.idempotency_key);
        if key.is_empty() {
            return Ok(None);
        }
        let mut fingerprint = FingerprintBuilder::default();
        // prost writes fields in number order: equal requests encode equally.
        fingerprint.part("grpc", &prost::Message::encode_to_vec(&*req));
        let scope = limits::shared::visitor_name(&caller.visitor.key);
        IdempotencyKey::new(&scope, &key, fingerprint.finish())
            .map(Some)
            .map_err(|_| ApiError::IDEMPOTENCY_KEY_INVALID)
    }

    /// `req.file` (and the `filename` naming it), taken out of `req`.
    fn file_upload(req: &mut proto::PublishRequest) -> Result<Option<FileUpload>, ApiError> {
        if req.file.is_empty() {
            return Ok(None);
        }
        if !req.attach.is_empty() {
            return Err(ApiError::BAD_REQUEST.with_detail("give attach or file, not both"));
        }
        if req.file.len() > FILE_MAX {
            return Err(ApiError::ENTITY_TOO_LARGE
                .with_detail("file larger than 4 MiB: upload it over HTTP (PUT with Filename)"));
        }
        let name = std::mem::take(&mut req.filename);
        Ok(Some(FileUpload {
            bytes: std::mem::take(&mut req.file).into(),
            name: (!name.is_empty()).then_some(name),
        }))
    }

    fn message_kind(&self, req: proto::PublishRequest) -> Result<PublishKind, ApiError> {
        let draft = convert::draft(req, self.draft_limits(), now_unix())?;
        Ok(PublishKind::Message(Box::new(draft)))
    }

    /// The unary call `method`: authenticate, then `body`, measured and logged.
    async fn unary<T, F, Fut>(
        &self,
        method: &'static str,
        topic: Option<String>,
        req: Request<T>,
        body: F,
    ) -> Result<Response<proto::Message>, Status>
    where
        F: FnOnce(Caller, T) -> Fut,
        Fut: std::future::Future<Output = Result<Message, Refused>>,
    {
        let call = Call::start(method);
        let result = match self.caller(&req).await {
            Ok(caller) => body(caller, req.into_inner()).await,
            Err(e) => Err(e),
        };
        let result = result.map(|m| convert::message(&m)).map_err(|e| e.status());
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        call.finish(&self.metrics, code, topic.as_deref());
        result.map(Response::new)
    }

    /// `Delete` or `Clear`: the sequence event `kind` makes, published as HTTP's
    /// sequence actions are.
    async fn sequence_call(
        &self,
        method: &'static str,
        request: Request<proto::SequenceRequest>,
        kind: fn(String) -> PublishKind,
    ) -> Result<Response<proto::Message>, Status> {
        let topic = request.get_ref().topic.clone();
        self.unary(method, Some(topic), request, |caller, req| async move {
            self.publish_one(&caller, &req.topic, None, None, || {
                Ok(kind(sequence_id(&req.sequence_id)?))
            })
            .await
        })
        .await
    }

    /// Validates a subscription (or poll) as HTTP does.
    fn validate(
        &self,
        caller: &Caller,
        req: &proto::SubscribeRequest,
        poll: bool,
    ) -> Result<SubscribeRequest, Refused> {
        let topics = req.topics.join(",");
        self.state
            .streams()
            .validate(&caller.principal, &topics, || {
                convert::subscribe_params(req, poll, now_unix())
            })
            .map_err(|e| self.refused(e))
    }

    fn backlog_refused(&self, error: ApiError) -> Refused {
        // A read refused for want of a `history-read-limit` place says when to retry.
        let retry = (error == ApiError::TOO_MANY_REQUESTS).then_some(HISTORY_RETRY_AFTER);
        Refused { error, retry }
    }

    async fn open_subscription(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> Result<EventStream, Refused> {
        let caller = self.caller(&req).await?;
        self.charge(&caller.visitor, Charge::Request).await?;
        let req = req.into_inner();
        let sub_req = self.validate(&caller, &req, false)?;
        let streams = self.state.streams();
        let slot = streams
            .admit(&caller.visitor, &sub_req.topics)
            .await
            .map_err(|r| self.refusal(r, &caller.visitor))?;
        let subscription = self
            .state
            .herald
            .subscribe(&sub_req.topics, Transport::Grpc);
        let backlog = streams
            .backlog(&sub_req, false)
            .await
            .map_err(|e| self.backlog_refused(e))?;
        let open = Message::new(EventKind::Open, sub_req.topic_label.clone());
        let live = LiveStream {
            subscription,
            _slot: slot,
            filters: sub_req.params.filters,
            seen: HashSet::new(),
            pending: VecDeque::from([convert::message(&open)]),
            backlog: Some(backlog),
            batch: Vec::new(),
            ended: false,
        };
        Ok(Box::pin(futures_util::stream::unfold(
            live,
            |mut s| async move {
                let item = s.next().await?;
                Some((item, s))
            },
        )))
    }

    async fn open_poll(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> Result<EventStream, Refused> {
        let caller = self.caller(&req).await?;
        self.charge(&caller.visitor, Charge::Request).await?;
        let req = req.into_inner();
        let sub_req = self.validate(&caller, &req, true)?;
        let backlog = self
            .state
            .streams()
            .backlog(&sub_req, true)
            .await
            .map_err(|e| self.backlog_refused(e))?;
        let state = (backlog, VecDeque::<proto::Message>::new(), false);
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |(mut backlog, mut pending, mut ended)| async move {
                loop {
                    if let Some(m) = pending.pop_front() {
                        return Some((Ok(m), (backlog, pending, ended)));
                    }
                    if ended {
                        return None;
                    }
                    match backlog.next_page().await {
                        Ok(Some(page)) => pending.extend(page.iter().map(convert::message)),
                        Ok(None) => return None,
                        Err(e) => {
                            // Mid-answer: end with the error, so the client knows the
                            // answer is incomplete.
                            ended = true;
                            return Some((Err(status(&e, None)), (backlog, pending, ended)));
                        }
                    }
                }
            },
        )))
    }

    async fn stream_call(
        &self,
        method: &'static str,
        req: Request<proto::SubscribeRequest>,
        poll: bool,
    ) -> Result<Response<EventStream>, Status> {
        let call = Call::start(method);
        let topic = req.get_ref().topics.join(",");
        let result = if poll {
            self.open_poll(req).await
        } else {
            self.open_subscription(req).await
        };
        let result = result.map_err(|e| e.status());
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        call.finish(&self.metrics, code, Some(&topic));
        result.map(Response::new)
    }
}

/// `topic` as one valid topic name.
fn single_topic(name: &str) -> Result<String, ApiError> {
    let mut topics = crate::subscribe::parse_topic_list(name)?;
    match (topics.pop(), topics.is_empty()) {
        (Some(t), true) => Ok(t),
        _ => Err(ApiError::TOPIC_INVALID),
    }
}

/// A sequence ID as the path segment HTTP takes it from must be.
fn sequence_id(sid: &str) -> Result<String, ApiError> {
    if topic::is_valid_name(sid) {
        Ok(sid.to_string())
    } else {
        Err(ApiError::SEQUENCE_ID_INVALID)
    }
}

/// One live `Subscribe` stream: `open`, the backlog a page at a time, then what the
/// hub queues for it, minus what the backlog already sent, filtered. The hub cuts it
/// off past `subscriber-queue-size` when HTTP/2 flow control holds it back.
struct LiveStream {
    subscription: Subscription,
    _slot: SlotGuard,
    filters: Filters,
    /// IDs already sent from the backlog; a live copy of one is skipped.
    seen: HashSet<String>,
    pending: VecDeque<proto::Message>,
    backlog: Option<Backlog>,
    batch: Vec<Delivery>,
    ended: bool,
}

impl LiveStream {
    async fn next(&mut self) -> Option<Result<proto::Message, Status>> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(Ok(m));
            }
            if self.ended {
                return None;
            }
            if let Some(backlog) = self.backlog.as_mut() {
                match backlog.next_page().await {
                    Ok(Some(page)) => {
                        for m in &page {
                            self.seen.insert(m.id.clone());
                        }
                        self.pending.extend(page.iter().map(convert::message));
                    }
                    Ok(None) => self.backlog = None,
                    Err(e) => {
                        // The client resumes with `since=<last id>`.
                        self.ended = true;
                        return Some(Err(status(&e, None)));
                    }
                }
                continue;
            }
            self.batch.clear();
            if let Err(reason) = self.subscription.next_batch(&mut self.batch).await {
                self.ended = true;
                return Some(Err(match reason {
                    CloseReason::Shutdown => status(&ApiError::UNAVAILABLE, None),
                    CloseReason::TooSlow => Status::resource_exhausted(
                        "subscriber too slow: more than subscriber-queue-size events behind",
                    ),
                }));
            }
            for delivery in self.batch.drain(..) {
                // Keepalive is HTTP/2 PING (the server's keepalive), not an event.
                if let Delivery::Event(event) = delivery {
                    if !self.seen.is_empty() && self.seen.remove(&event.message.id) {
                        continue;
                    }
                    if self.filters.pass(&event.message) {
                        self.pending.push_back(convert::message(&event.message));
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl proto::herald_server::Herald for HeraldService {
    async fn publish(
        &self,
        request: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::Message>, Status> {
        let topic = request.get_ref().topic.clone();
        self.unary(
            "Publish",
            Some(topic),
            request,
            |caller, mut req| async move {
                let topic = req.topic.clone();
                let key = Self::idempotency_key(&caller, &mut req).map_err(|e| self.refused(e))?;
                let file = Self::file_upload(&mut req).map_err(|e| self.refused(e))?;
                self.publish_one(&caller, &topic, key, file, || self.message_kind(req))
                    .await
            },
        )
        .await
    }

    async fn publish_batch(
        &self,
        request: Request<proto::PublishBatchRequest>,
    ) -> Result<Response<proto::PublishBatchResponse>, Status> {
        let call = Call::start("PublishBatch");
        let result = self.publish_batch_inner(request).await;
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        call.finish(&self.metrics, code, None);
        result.map(Response::new)
    }

    async fn delete(
        &self,
        request: Request<proto::SequenceRequest>,
    ) -> Result<Response<proto::Message>, Status> {
        self.sequence_call("Delete", request, |sequence_id| PublishKind::Delete {
            sequence_id,
        })
        .await
    }

    async fn clear(
        &self,
        request: Request<proto::SequenceRequest>,
    ) -> Result<Response<proto::Message>, Status> {
        self.sequence_call("Clear", request, |sequence_id| PublishKind::Clear {
            sequence_id,
        })
        .await
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.stream_call("Subscribe", request, false).await
    }

    type PollStream = EventStream;

    async fn poll(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::PollStream>, Status> {
        self.stream_call("Poll", request, true).await
    }

    async fn stats(
        &self,
        request: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let call = Call::start("Stats");
        // Free, as `GET /v1/stats` is; credentials, if any, must still be right.
        let result = self.caller(&request).await.map_err(|e| e.status());
        let result = result.map(|_| proto::StatsResponse {
            messages: i64::try_from(self.state.herald.published_count()).unwrap_or(i64::MAX),
            messages_rate: self.state.herald.published_rate(),
        });
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        call.finish(&self.metrics, code, None);
        result.map(Response::new)
    }
}

impl HeraldService {
    /// Each message published as by `Publish`, with its own result. Messages that
    /// cannot wait for one another (no sequence to replace, this node's limits)
    /// are published together, so they share group commits; they take their IDs
    /// in batch order all the same (the core's sequencer takes them in call order).
    async fn publish_batch_inner(
        &self,
        request: Request<proto::PublishBatchRequest>,
    ) -> Result<proto::PublishBatchResponse, Status> {
        let caller = self.caller(&request).await.map_err(|e| e.status())?;
        let messages = request.into_inner().messages;
        if messages.len() > BATCH_MAX {
            return Err(status(
                &ApiError::BAD_REQUEST.with_detail("more than 1000 messages in one batch"),
                None,
            ));
        }
        let together = !self.state.limits.is_shared();
        let mut results = Vec::with_capacity(messages.len());
        let mut run = Vec::new();
        for req in messages {
            let alone = !together || !req.sequence_id.is_empty();
            if alone && !run.is_empty() {
                results.extend(futures_util::future::join_all(run.drain(..)).await);
            }
            let caller = &caller;
            let mut req = req;
            let publish = async move {
                let topic = req.topic.clone();
                let key = Self::idempotency_key(caller, &mut req).map_err(|e| self.refused(e))?;
                let file = Self::file_upload(&mut req).map_err(|e| self.refused(e))?;
                self.publish_one(caller, &topic, key, file, || self.message_kind(req))
                    .await
            };
            if alone {
                results.push(publish.await);
            } else {
                run.push(publish);
            }
        }
        results.extend(futures_util::future::join_all(run).await);
        Ok(proto::PublishBatchResponse {
            results: results
                .into_iter()
                .map(|r| proto::PublishResult {
                    result: Some(match r {
                        Ok(m) => proto::publish_result::Result::Message(convert::message(&m)),
                        Err(e) => {
                            proto::publish_result::Result::Error(batch_error(&e.error, e.retry))
                        }
                    }),
                })
                .collect(),
        })
    }
}
