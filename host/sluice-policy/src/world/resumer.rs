//! The `resumer` world: `resume(resume-request) -> result<list<list<u8>>, string>`, asked once
//! per resume of a broken stream. Its built-in stand-in is [`crate::builtin::ReplayUnchanged`].
//!
//! Holds the typed call into the export and the samples a resumer must answer; replaying the
//! answer is the data plane's job.

use std::time::Duration;

use sluice_config::SlotKind;
use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::{World, sample_traffic};
use crate::bindings::resumer::{Resumer, ResumerPre};
use crate::host::HostState;
use crate::plugin::{CallFailure, Plugin};
use crate::types::{
    MonitorProfile, PackMember, RequestKind, ResumeRequest, Routing, TrafficClass, UpdateMark,
    check_resume,
};

/// The `resumer` world.
pub(crate) struct ResumerWorld;

impl World for ResumerWorld {
    const KIND: SlotKind = SlotKind::Resumer;
    const EXPORT: &'static str = "resume";
    const SIGNATURE: &'static str =
        "resume: func(request: resume-request) -> result<list<list<u8>>, string>";
    const EXTRA_IMPORTS: &'static [&'static str] = &[];
    const BUILTIN: &'static str = "replay-unchanged";

    type Pre = ResumerPre<HostState>;
    type Instance = Resumer;
    type Question = ResumeRequest;
    type Answer = Vec<Vec<u8>>;

    fn pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre> {
        ResumerPre::new(pre)
    }

    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Self::Instance> {
        pre.instantiate(store)
    }

    fn call(
        plugin: &Plugin,
        request: &ResumeRequest,
        deadline: Duration,
    ) -> Result<Vec<Vec<u8>>, CallFailure> {
        plugin.resume_within(request, deadline)
    }

    fn check(messages: &Vec<Vec<u8>>, request: &ResumeRequest) -> Result<(), String> {
        check_resume(messages, request)
    }

    fn samples() -> Vec<ResumeRequest> {
        sample_resume_requests()
    }
}

impl Plugin {
    /// Calls a resumer's `resume`. The caller validates the messages against the request.
    pub fn resume(&self, request: &ResumeRequest) -> Result<Vec<Vec<u8>>, CallFailure> {
        self.resume_within(request, self.limits().deadline)
    }

    pub(crate) fn resume_within(
        &self,
        request: &ResumeRequest,
        deadline: Duration,
    ) -> Result<Vec<Vec<u8>>, CallFailure> {
        let answer = self.run(deadline, |store, exports| {
            ResumerWorld::instance(exports)
                .ok_or_else(|| wasmtime::Error::msg("not a resumer plugin"))?
                .call_resume(store, request)
        })?;
        answer.map_err(CallFailure::from_plugin_error)
    }
}

impl Plugin {
    /// Calls one of a resumer's exports within the slot's deadline.
    fn call_resumer<T>(
        &self,
        call: impl FnOnce(&Resumer, &mut Store<HostState>) -> wasmtime::Result<Result<T, String>>,
    ) -> Result<T, CallFailure> {
        let answer = self.run(self.limits().deadline, |store, exports| {
            let resumer = ResumerWorld::instance(exports)
                .ok_or_else(|| wasmtime::Error::msg("not a resumer plugin"))?;
            call(resumer, store)
        })?;
        answer.map_err(CallFailure::from_plugin_error)
    }

    /// Calls a resumer's `classify`.
    pub fn classify(&self, method: &str, message: &[u8]) -> Result<RequestKind, CallFailure> {
        self.call_resumer(|resumer, store| resumer.call_classify(store, method, message))
    }

    /// Calls a resumer's `pack`.
    pub fn pack(&self, method: &str, members: &[PackMember]) -> Result<Vec<u8>, CallFailure> {
        self.call_resumer(|resumer, store| resumer.call_pack(store, method, members))
    }

    /// Calls a resumer's `unpack`. The caller checks there is one routing per message.
    pub fn unpack(&self, method: &str, messages: &[Vec<u8>]) -> Result<Vec<Routing>, CallFailure> {
        self.call_resumer(|resumer, store| resumer.call_unpack(store, method, messages))
    }

    /// Calls a resumer's `mark`. The caller checks there is one mark per message.
    pub fn mark(&self, method: &str, messages: &[Vec<u8>]) -> Result<Vec<UpdateMark>, CallFailure> {
        self.call_resumer(|resumer, store| resumer.call_mark(store, method, messages))
    }
}

/// The feed's `Subscribe` method, the protocol of the resume samples.
const FEED_SUBSCRIBE: &str = "/sluice.feed.v1.Feed/Subscribe";

/// A 16-byte `sluice.feed.v1.SubscribeRequest`: `from_seq` 7, `rate` 100.0, `payload_bytes` 16,
/// `topic` "t".
const SAMPLE_SUBSCRIBE: [u8; 16] = [
    0x08, 7, // from_seq = 7
    0x11, 0, 0, 0, 0, 0, 0, 0x59, 0x40, // rate = 100.0 (fixed64)
    0x18, 16, // payload_bytes = 16
    0x2a, 1, b't', // topic = "t"
];

/// A `sluice.feed.v1.Event`: `seq` 41, `sent_at_ns` 1, `payload` 4 bytes, `topic` "t".
const SAMPLE_EVENT: [u8; 13] = [
    0x08, 41, // seq = 41
    0x10, 1, // sent_at_ns = 1
    0x1a, 4, 0xde, 0xad, 0xbe, 0xef, // payload
    0x22, 1, b't', // topic = "t"
];

/// Resumer questions used by the self-test: a feed subscription broken after 35 events, the
/// same one broken before its first event, and two messages of a method a feed resumer does
/// not know (which it must hand back unchanged). The payloads are real protobuf messages, so
/// a protocol-specific resumer can parse them.
pub fn sample_resume_requests() -> Vec<ResumeRequest> {
    let monitor = MonitorProfile {
        id: "self-test".to_owned(),
        class: TrafficClass::Realtime,
        critical: false,
        region: String::new(),
        traffic: sample_traffic(),
    };
    vec![
        ResumeRequest {
            monitor: monitor.clone(),
            method: FEED_SUBSCRIBE.to_owned(),
            requests: vec![SAMPLE_SUBSCRIBE.to_vec()],
            last_response: Some(SAMPLE_EVENT.to_vec()),
            responses_delivered: 35,
            attempt: 1,
        },
        ResumeRequest {
            monitor: monitor.clone(),
            method: FEED_SUBSCRIBE.to_owned(),
            requests: vec![SAMPLE_SUBSCRIBE.to_vec()],
            last_response: None,
            responses_delivered: 0,
            attempt: 2,
        },
        ResumeRequest {
            monitor,
            method: "/pkg.Service/Method".to_owned(),
            requests: vec![vec![0x0a, 2, b'h', b'i'], vec![0x10, 1]],
            last_response: Some(vec![0x08, 1]),
            responses_delivered: 1,
            attempt: 1,
        },
    ]
}
