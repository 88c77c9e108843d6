//! The agent loop of one task: pick the policy (scripted, cached plan,
//! openai or heuristic), ask it for code, run the code in the sandbox, feed
//! the observation back, until it finishes, `max_steps` or the task timeout.
//! Then judge the run, score the task's checks and fill in the trajectory
//! (CONTRACT §3, §4, §8).
//!
//! The run *completed* when the last step ran without error (or, with no
//! step at all, the policy gave an answer) and it was not cut short. The
//! checks ([`adp_core::reward`]) then decide `success`, `reward` and
//! `reward_breakdown`: a task without `expected_answer`, `tests` or
//! `verify` has the check `completed` (plus `expected_output`: the final
//! stdout, trimmed, contains it), so success keeps its old meaning; the
//! `tests` check runs in the task's stateful session when it is still
//! alive, else in one more jail that replays the cells ([`crate::grader`]).
//! `final_result` is the model's final answer if it gave one, else the last
//! step's stdout; it is what answer checks check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adp_core::cache::TemplateCache;
use adp_core::llm::LlmClient;
use adp_core::queue::{TaskContext, TaskHandler};
use adp_core::reward::{self, Checks, Evaluation, FinalState, Live};
use adp_core::types::unix_now;
use adp_core::{ActionType, ErrorType, ExecutionStep, InfraError, TaskSpec, Trajectory};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use crate::config::SessionMode;
use crate::executor::{Execution, Sandbox};
use crate::grader;
use crate::policy::openai::{self, OpenAiSession, PromptLimits};
use crate::policy::{heuristic, scripted, Decision, Plan, Policy, Replay};
use crate::session::{state_lost_note, Session, INTERRUPT_GRACE};
use crate::RUNTIME;

/// Runs code tasks; the [`TaskHandler`] of this runtime.
#[derive(Clone)]
pub struct CodeAgent {
    sandbox: Sandbox,
    llm: Option<LlmClient>,
    cache: TemplateCache,
    /// One permit per jail allowed at once (`SANDBOX_CONCURRENCY`). The
    /// worker may hold more tasks than this; they wait here for a jail, so a
    /// task writing its trajectory or waiting for the model frees its jail.
    jail_slots: Arc<Semaphore>,
    mode: SessionMode,
    /// What the model is told it can import beyond the standard library.
    packages: Option<Vec<String>>,
}

/// The jails of one task: its current session (stateful mode) and what
/// `metadata.session` reports.
struct Jails {
    mode: SessionMode,
    /// A stateful task that can run one step only and has no `tests` cell:
    /// no later cell could use its state, so its step runs in a one-shot
    /// jail, which costs less than a session (docs/sandbox.md).
    one_step: bool,
    session: Option<Session>,
    /// Jails started for the task (sessions, or one per step in oneshot mode).
    started: u32,
    /// The step whose cell ended the last session, until the next one starts.
    lost_at: Option<usize>,
}

impl Jails {
    fn new(mode: SessionMode, task: &TaskSpec) -> Self {
        Jails {
            mode,
            one_step: mode == SessionMode::Stateful
                && task.max_steps <= 1
                && task.constraints.get("tests").is_none(),
            session: None,
            started: 0,
            lost_at: None,
        }
    }

    /// Runs step `index` (`code`) with wall limit `wall`; `remaining` is the
    /// task's time left and `max_steps` its step budget (a new session's
    /// lifetime and CPU bound).
    async fn run(
        &mut self,
        sandbox: &Sandbox,
        index: usize,
        code: &str,
        wall: Duration,
        remaining: Duration,
        max_steps: u32,
    ) -> Result<Execution, InfraError> {
        if self.mode == SessionMode::Oneshot || (self.one_step && index == 0) {
            self.started += 1;
            return sandbox.run(code, wall).await;
        }
        let session = match &mut self.session {
            Some(s) => s,
            None => {
                self.started += 1;
                // One cell more than the steps: the `tests` check may run
                // in this session after the last step.
                self.session
                    .insert(sandbox.start_session(remaining, u64::from(max_steps) + 1)?)
            }
        };
        let fresh = session.cells() == 0;
        let run = session.run_cell(code, wall).await?;
        let mut exec = run.execution;
        if fresh {
            if let Some(step) = self.lost_at.take() {
                exec.notes.insert(0, state_lost_note(step));
            }
        }
        if !run.alive {
            self.lost_at = Some(index);
            if let Some(s) = self.session.take() {
                s.close().await;
            }
        }
        Ok(exec)
    }

    /// The task's session, when it is alive and has at least `need` of its
    /// lifetime left (and a cell to spare: a session is started for the
    /// task's `max_steps` cells plus one for the tests).
    fn live_session(&mut self, need: Duration) -> Option<&mut Session> {
        self.session
            .as_mut()
            .filter(|s| s.is_alive() && s.time_left() >= need)
    }

    /// Ends the task's session (in the background: the trajectory need not
    /// wait for the interpreter to exit).
    fn finish(&mut self) {
        if let Some(s) = self.session.take() {
            tokio::spawn(s.close());
        }
    }

    /// `metadata.session`.
    fn metadata(&self) -> Value {
        let mut m = json!({ "mode": self.mode.as_str(), "sessions": self.started });
        if self.one_step && self.started > 0 {
            m["one_step_oneshot"] = json!(true);
        }
        m
    }
}

/// How the loop ended.
enum Ending {
    /// The policy finished (with the model's answer, or `None`).
    Finished(Option<String>),
    /// The policy has no plan; the text explains.
    GaveUp(String),
    /// `max_steps` steps ran.
    OutOfSteps,
    /// The task's timeout passed.
    TimedOut,
}

impl CodeAgent {
    /// An agent running at most `jails` pieces of code at once.
    pub fn new(
        sandbox: Sandbox,
        llm: Option<LlmClient>,
        cache: TemplateCache,
        jails: usize,
        mode: SessionMode,
    ) -> Self {
        let packages = sandbox
            .config()
            .packages_dir
            .as_deref()
            .map(crate::limits::importable_packages);
        CodeAgent {
            sandbox,
            llm,
            cache,
            jail_slots: Arc::new(Semaphore::new(jails.max(1))),
            mode,
            packages,
        }
    }

    fn limits(&self) -> PromptLimits {
        PromptLimits {
            step_timeout_secs: self.sandbox.config().step_timeout.as_secs(),
            memory_mb: self.sandbox.config().memory_mb,
            stateful: self.mode == SessionMode::Stateful,
            packages: self.packages.clone(),
        }
    }

    /// Chooses the policy: scripted code, else a cached plan, else the model,
    /// else the offline heuristic. Returns it and whether it came from the cache.
    async fn policy_for(&self, task: &TaskSpec) -> (Policy, bool) {
        if let Some(cells) = task.code_cells() {
            return (Policy::Scripted(scripted::Scripted::new(cells)), false);
        }
        if let Some(plan) = self.cache.get::<Plan>(task).await {
            if !plan.code.is_empty() {
                let system = openai::system_prompt(&self.limits());
                let user = openai::task_prompt(task);
                return (Policy::Replay(Replay::new(plan, &system, &user)), true);
            }
        }
        match &self.llm {
            Some(client) => (
                Policy::OpenAi(Box::new(OpenAiSession::new(
                    client.clone(),
                    self.limits(),
                    task,
                ))),
                false,
            ),
            None => (
                Policy::Heuristic(heuristic::Heuristic::new(
                    &task.description,
                    self.mode == SessionMode::Stateful,
                    task.max_steps,
                )),
                false,
            ),
        }
    }

    /// Runs one task to its trajectory. `Err` only for infrastructure failures.
    pub async fn run_task(&self, task: &TaskSpec) -> Result<Trajectory, InfraError> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(task.timeout);
        let mut trajectory = Trajectory::new(task, RUNTIME);
        let (mut policy, cache_hit) = self.policy_for(task).await;
        let intent = match &policy {
            Policy::Heuristic(h) => h.intent().map(|i| i.name),
            _ => None,
        };

        let mut last: Option<Execution> = None;
        let mut jails = Jails::new(self.mode, task);
        let ending = loop {
            if trajectory.steps.len() >= task.max_steps as usize {
                break Ending::OutOfSteps;
            }
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                break Ending::TimedOut;
            };
            let decision = match tokio::time::timeout(remaining, policy.next(last.as_ref())).await {
                Ok(d) => d?,
                Err(_) => break Ending::TimedOut,
            };
            let code = match decision {
                Decision::Run(code) => code,
                Decision::Finish(answer) => break Ending::Finished(answer),
                Decision::GiveUp(why) => break Ending::GaveUp(why),
            };
            let slot = match tokio::time::timeout_at(
                deadline.into(),
                self.jail_slots.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(slot)) => slot,
                Ok(Err(_)) => return Err(InfraError::new("sandbox", "jail slots closed")),
                Err(_) => break Ending::TimedOut,
            };
            let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
                break Ending::TimedOut;
            };
            let wall = self.sandbox.config().step_timeout.min(remaining);
            let timestamp = unix_now();
            let exec = jails
                .run(
                    &self.sandbox,
                    trajectory.steps.len(),
                    &code,
                    wall,
                    remaining,
                    task.max_steps,
                )
                .await;
            drop(slot);
            let exec = exec?;
            trajectory
                .steps
                .push(step(trajectory.steps.len(), code, &exec, timestamp));
            last = Some(exec);
        };

        self.judge(task, &mut trajectory, last.as_ref(), &ending);
        self.score(task, &mut trajectory, last.as_ref(), &mut jails)
            .await?;
        jails.finish();
        trajectory.total_duration = started.elapsed().as_secs_f64();
        trajectory.meta("policy", policy.name());
        trajectory.meta("cache_hit", cache_hit);
        trajectory.meta("session", jails.metadata());
        if let Some(intent) = intent {
            trajectory.meta("intent", intent);
        }
        if let Some(messages) = policy.messages() {
            trajectory.meta("messages", messages);
        }
        policy.record(trajectory.steps.len(), &mut trajectory);

        if trajectory.success && !cache_hit {
            if let Some(plan) = policy.plan() {
                self.cache.put(task, &plan).await;
            }
        }
        Ok(trajectory)
    }

    /// Sets success, final_result, error_type and error_message.
    fn judge(
        &self,
        task: &TaskSpec,
        t: &mut Trajectory,
        last: Option<&Execution>,
        ending: &Ending,
    ) {
        let last_stdout = last.map(|e| e.stdout.marked("stdout"));
        let answer = match ending {
            Ending::Finished(Some(a)) => Some(a.clone()),
            _ => None,
        };
        t.final_result = answer
            .clone()
            .or_else(|| last_stdout.clone())
            .unwrap_or_default();
        match ending {
            Ending::GaveUp(why) => {
                t.success = false;
                t.final_result = why.clone();
                t.error_message = Some(why.clone());
                return;
            }
            Ending::TimedOut => {
                t.success = false;
                t.error_type = Some(ErrorType::Timeout);
                t.error_message = Some(format!(
                    "task timeout of {} s reached after {} step(s)",
                    task.timeout,
                    t.steps.len()
                ));
                return;
            }
            Ending::Finished(_) | Ending::OutOfSteps => {}
        }
        if let Some(exec) = last {
            if !exec.success() {
                t.success = false;
                t.error_type = exec.error_type();
                t.error_message = exec.verdict.message.clone();
                return;
            }
        } else if answer.is_none() {
            t.success = false;
            t.error_message = Some("the task ended without running any code".to_owned());
            return;
        }
        t.success = true;
    }

    /// Scores the task's checks: `t.success` says on entry whether the run
    /// completed; on return it says whether every check passed. Records the
    /// final state. The `tests` check runs in the task's session when it is
    /// still alive, else in a jail that replays the cells ([`grader`]).
    /// `Err` only when the test jail could not run.
    async fn score(
        &self,
        task: &TaskSpec,
        t: &mut Trajectory,
        last: Option<&Execution>,
        jails: &mut Jails,
    ) -> Result<(), InfraError> {
        let checks = match Checks::from_task(task) {
            Ok(c) => c,
            Err(e) => {
                Evaluation::invalid(&e).apply(t);
                return Ok(());
            }
        };
        let why_not = t
            .error_message
            .clone()
            .or_else(|| t.error_type.map(|e| e.as_str().to_owned()));
        let mut live = Live::default().completed(t.success, why_not.as_deref());
        if let Some(tests) = checks.tests() {
            let _slot = self
                .jail_slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| InfraError::new("sandbox", "jail slots closed"))?;
            // The tests cell needs a step's wall time (plus the interrupt's
            // grace) of the session's lifetime.
            let need = self.sandbox.config().step_timeout + INTERRUPT_GRACE * 2;
            let outcome = match jails.live_session(need) {
                Some(session) => {
                    grader::run_tests_in_session(session, &self.sandbox, t, tests).await?
                }
                None => grader::run_tests(&self.sandbox, t, tests).await?,
            };
            live.set("tests", outcome);
        }
        let state = FinalState {
            answer: t.final_result.clone(),
            stdout: last.map(|e| e.stdout.text.clone()),
            ..FinalState::default()
        };
        t.meta(reward::FINAL_STATE_KEY, json!(state.recorded()));
        reward::evaluate(&checks, &state, &live).apply(t);
        Ok(())
    }
}

fn step(index: usize, code: String, exec: &Execution, timestamp: f64) -> ExecutionStep {
    let mut params = Map::new();
    params.insert("code".to_owned(), Value::String(code));
    ExecutionStep {
        step_id: index as u32,
        action_type: ActionType::CodeExecution,
        action_params: params,
        observation: exec.observation(),
        success: exec.success(),
        error_type: exec.error_type(),
        error_message: exec.verdict.message.clone(),
        timestamp,
        duration: exec.duration.as_secs_f64(),
    }
}

impl TaskHandler for CodeAgent {
    async fn handle(&self, task: TaskSpec, _ctx: TaskContext) -> Result<Trajectory, InfraError> {
        // If the worker gives up on this task (shutdown grace over), it drops
        // this future: the running nsjail is killed with it (kill_on_drop).
        self.run_task(&task).await
    }
}
