//! One web task, start to trajectory: pick the policy (scripted, a cached
//! plan, openai or heuristic), open a fresh browser context, go to the start
//! URL, then ask–act–observe until the policy is done, `max_steps` or the
//! task's timeout; read the final page and score the task's checks
//! ([`adp_core::reward`]: `success`, `reward`, `reward_breakdown`); cache
//! the plan.
//!
//! A dead browser ends the attempt with an [`InfraError`] (`browser`): the
//! worker retries the task; it is not recorded as the agent's failure.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use adp_core::cache::TemplateCache;
use adp_core::llm::LlmClient;
use adp_core::queue::{TaskContext, TaskHandler};
use adp_core::reward::{self, CheckError, CheckKind, Checks, Evaluation, Live, Outcome};
use adp_core::types::unix_now;
use adp_core::{ActionType, ErrorType, ExecutionStep, InfraError, TaskSpec, Trajectory};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::actions::Action;
use crate::axtree::{self, AxRead};
use crate::browser::{BrowserError, BrowserManager, Session};
use crate::exec::{self, FinalPage, Performed};
use crate::observe::{Observation, ObservationMode, Screenshot};
use crate::page::EvalError;
use crate::policy::heuristic::Heuristic;
use crate::policy::openai::OpenAi;
use crate::policy::scripted::Scripted;
use crate::policy::{Decision, Policy, Turn};

/// The `runtime_id` of trajectories and the metric label.
pub const RUNTIME: &str = "web-runtime";

/// Time an observation may take after its action.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How the agent runs tasks.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Per-action budget (navigation and settling included).
    pub action_timeout: Duration,
    /// Visible text kept in an observation.
    pub max_text: usize,
    /// Interactive elements listed in an observation.
    pub max_elements: usize,
    /// Bytes of one rendered observation at most.
    pub max_bytes: usize,
    /// What an observation shows (`WEB_OBSERVATION`).
    pub observation: ObservationMode,
    /// Accessibility-tree nodes rendered at most.
    pub max_ax_nodes: usize,
    /// Bytes of the raw accessibility tree stored per step at most (0: not stored).
    pub max_raw_axtree_bytes: usize,
    /// Save a PNG per step under `$OUTPUT_DIR/trajectories/<task_id>/`.
    pub screenshots: bool,
    /// Also attach each step's screenshot to the model's next request
    /// (`WEB_SCREENSHOTS=model`; implies `screenshots`).
    pub screenshots_to_model: bool,
    /// Draw set-of-marks frames and ids on the model's screenshot
    /// (`WEB_SCREENSHOT_MARKS`; only with `screenshots_to_model`).
    pub screenshot_marks: bool,
    pub output_dir: PathBuf,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            action_timeout: Duration::from_secs(15),
            max_text: 4000,
            max_elements: 60,
            max_bytes: 32_768,
            observation: ObservationMode::Both,
            max_ax_nodes: 400,
            max_raw_axtree_bytes: 1 << 20,
            screenshots: false,
            screenshots_to_model: false,
            screenshot_marks: false,
            output_dir: PathBuf::from("output"),
        }
    }
}

/// What the plan cache keeps for a web task: the actions the policy chose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedPlan {
    pub policy: String,
    pub start_url: Option<String>,
    pub actions: Vec<Value>,
}

/// The runtime's [`TaskHandler`].
#[derive(Clone)]
pub struct WebHandler {
    browser: BrowserManager,
    settings: AgentSettings,
    llm: Option<LlmClient>,
    cache: TemplateCache,
}

impl TaskHandler for WebHandler {
    fn handle(
        &self,
        task: TaskSpec,
        ctx: TaskContext,
    ) -> impl std::future::Future<Output = Result<Trajectory, InfraError>> + Send {
        let this = self.clone();
        async move { this.run(task, ctx).await }
    }
}

fn infra(e: BrowserError) -> InfraError {
    let component = match e {
        BrowserError::Dns(_) => "dns",
        _ => "browser",
    };
    InfraError::new(component, e.to_string())
}

/// Scores the task's checks on the final page: `t.success` says on entry
/// whether the run completed (last step ok, not cut short); on return,
/// whether every check passed. Records `metadata.final_state`.
fn score(t: &mut Trajectory, checks: Result<Checks, CheckError>, page: FinalPage) {
    let checks = match checks {
        Ok(c) => c,
        Err(e) => return Evaluation::invalid(&e).apply(t),
    };
    let why_not = t
        .error_message
        .clone()
        .or_else(|| t.error_type.map(|e| e.as_str().to_owned()));
    let mut live = Live::default().completed(t.success, why_not.as_deref());
    if page.read {
        live.selectors(&checks, &page.found);
    } else {
        for check in &checks.items {
            if let CheckKind::Selector(sel) = &check.kind {
                live.set(
                    &check.name,
                    Outcome::fail(format!(
                        "the final page could not be read to look for {sel:?}"
                    )),
                );
            }
        }
    }
    let mut state = page.state;
    state.answer = t.final_result.clone();
    t.meta(reward::FINAL_STATE_KEY, json!(state.recorded()));
    let eval = reward::evaluate(&checks, &state, &live);
    if let Some(item) = eval.breakdown.iter().find(|i| i.name == "expected_text") {
        t.meta("expected_text_found", item.score >= 1.0);
    }
    eval.apply(t);
}

/// Why the loop stopped early.
enum Stop {
    GaveUp(String),
    Deadline,
}

impl WebHandler {
    pub fn new(
        browser: BrowserManager,
        settings: AgentSettings,
        llm: Option<LlmClient>,
        cache: TemplateCache,
    ) -> Self {
        WebHandler {
            browser,
            settings,
            llm,
            cache,
        }
    }

    pub fn browser(&self) -> &BrowserManager {
        &self.browser
    }

    /// Runs one task (one attempt).
    pub async fn run(&self, task: TaskSpec, ctx: TaskContext) -> Result<Trajectory, InfraError> {
        let started = Instant::now();
        let mut traj = Trajectory::new(&task, RUNTIME);
        let (mut policy, cache_hit) = self.choose_policy(&task).await;
        traj.meta("policy", policy.name());
        traj.meta("cache_hit", cache_hit);
        traj.meta("observation_mode", self.settings.observation.as_str());
        if let Policy::Heuristic(h) = &policy {
            traj.meta("heuristic_intent", h.intent());
        }

        let opening = Instant::now();
        let session = self.browser.open_session().await.map_err(infra)?;
        let opened_ms = opening.elapsed().as_millis() as u64;
        traj.meta("browser_generation", session.instance.generation);
        let outcome = tokio::select! {
            r = self.drive(&task, &session, &mut policy, &mut traj, started) => r,
            _ = ctx.cancel.cancelled() => Err(InfraError::new("browser", "stopped: the shutdown grace period ran out")),
        };
        let popups = session.popups_closed();
        if popups > 0 {
            traj.meta("popups_closed", popups);
        }
        let blocked = session.refusals().since(&session.frame_id, 0);
        if !blocked.is_empty() {
            traj.meta(
                "blocked_requests",
                serde_json::to_value(&blocked).unwrap_or_default(),
            );
        }
        let checks = Checks::from_task(&task);
        let final_page = match (&outcome, &checks) {
            (Ok((obs, _, _)), Ok(c)) => {
                Some(exec::read_final_page(&session, obs, &c.selectors()).await)
            }
            _ => None,
        };
        let closing = Instant::now();
        session.close().await;
        tracing::debug!(task_id = %task.task_id, open_ms = opened_ms, close_ms = closing.elapsed().as_millis() as u64, total_ms = started.elapsed().as_millis() as u64, "Browser session closed.");
        let (final_obs, finish_answer, stop) = outcome?;

        policy.record(&mut traj);
        let last_failed = traj.steps.last().is_some_and(|s| !s.success);
        if let Some(last) = traj.steps.last().filter(|s| !s.success) {
            traj.error_type = last.error_type;
            traj.error_message = last.error_message.clone();
        }
        let mut success = !traj.steps.is_empty() && !last_failed;
        match stop {
            Some(Stop::GaveUp(why)) => {
                success = false;
                traj.error_message = Some(format!("{} policy: {why}", policy.name()));
            }
            Some(Stop::Deadline) => {
                success = false;
                traj.error_type = Some(ErrorType::Timeout);
                traj.error_message = Some(format!("task timeout of {} s reached", task.timeout));
            }
            None => {}
        }
        traj.success = success;
        traj.final_result = finish_answer.unwrap_or_else(|| final_obs.text.clone());
        traj.total_duration = started.elapsed().as_secs_f64();
        let final_page = final_page.transpose().map_err(infra)?.unwrap_or_default();
        score(&mut traj, checks, final_page);

        // A plan that names accessibility-tree ids is not cached: an id
        // means something only on the page it was read from.
        let portable = traj.steps.iter().all(|s| {
            Action::from_value(&Value::Object(s.action_params.clone()))
                .map_or(true, |a| a.node().is_none())
        });
        if traj.success
            && !cache_hit
            && portable
            && matches!(policy, Policy::OpenAi(_) | Policy::Heuristic(_))
        {
            let plan = CachedPlan {
                policy: policy.name().to_owned(),
                start_url: task.start_url().map(str::to_owned),
                actions: traj
                    .steps
                    .iter()
                    .filter(|s| s.action_params.get("auto") != Some(&Value::Bool(true)))
                    .map(|s| {
                        let mut p = s.action_params.clone();
                        p.remove("screenshot");
                        Value::Object(p)
                    })
                    .collect(),
            };
            self.cache.put(&task, &plan).await;
        }
        Ok(traj)
    }

    /// Scripted for `constraints.actions`; else a cached plan; else openai
    /// (an LLM is configured) or heuristic.
    async fn choose_policy(&self, task: &TaskSpec) -> (Policy, bool) {
        if let Some(actions) = task.actions() {
            return (Policy::Scripted(Scripted::from_values(actions)), false);
        }
        if let Some(plan) = self.cache.get::<CachedPlan>(task).await {
            if plan.start_url.as_deref() == task.start_url() {
                let actions: Result<Vec<Action>, String> =
                    plan.actions.iter().map(Action::from_value).collect();
                match actions {
                    Ok(actions) => {
                        tracing::debug!(task_id = %task.task_id, policy = %plan.policy, "Replaying a cached plan.");
                        return (Policy::Scripted(Scripted::from_actions(actions)), true);
                    }
                    Err(e) => {
                        tracing::warn!(task_id = %task.task_id, error = %e, "Cached plan does not parse; ignoring it.")
                    }
                }
            } else {
                tracing::debug!(task_id = %task.task_id, "Cached plan is for another start URL; ignoring it.");
            }
        }
        match &self.llm {
            Some(client) => (
                Policy::OpenAi(Box::new(OpenAi::new(
                    client.clone(),
                    self.settings.observation,
                ))),
                false,
            ),
            None => (Policy::Heuristic(Heuristic::new(&task.description)), false),
        }
    }

    /// The ask–act–observe loop. Returns the last observation, the `finish`
    /// answer if any, and why it stopped early if it did.
    async fn drive(
        &self,
        task: &TaskSpec,
        session: &Session,
        policy: &mut Policy,
        traj: &mut Trajectory,
        started: Instant,
    ) -> Result<(Observation, Option<String>, Option<Stop>), InfraError> {
        let deadline = started + Duration::from_secs(task.timeout);
        let scripted_goto = matches!(policy, Policy::Scripted(s) if s.starts_with_goto());
        // The start URL is the first step, outside the policy's budget.
        let (mut obs, mut last) = match task.start_url().map(str::trim).filter(|u| !u.is_empty()) {
            Some(url) if !scripted_goto => {
                let action = Action::Goto {
                    url: url.to_owned(),
                };
                let (performed, o) = self
                    .step(task, session, traj, &action, deadline, true)
                    .await?;
                (o, Some((action, performed)))
            }
            // A fresh session: the page is still the blank one it was opened on.
            _ => (Observation::blank_page(), None),
        };

        let mut acted = 0u32;
        while acted < task.max_steps {
            if Instant::now() >= deadline {
                return Ok((obs, None, Some(Stop::Deadline)));
            }
            let decision = {
                let turn = Turn {
                    task,
                    observation: &obs,
                    last: last.as_ref().map(|(a, p)| (a, p)),
                    step: acted,
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(remaining, policy.next(turn)).await {
                    Ok(d) => d?,
                    Err(_) => return Ok((obs, None, Some(Stop::Deadline))),
                }
            };
            let action = match decision {
                Decision::Act(a) => a,
                Decision::Done => break,
                Decision::Answer(text) => return Ok((obs, Some(text), None)),
                Decision::GiveUp(why) => return Ok((obs, None, Some(Stop::GaveUp(why)))),
            };
            acted += 1;
            let (performed, o) = self
                .step(task, session, traj, &action, deadline, false)
                .await?;
            obs = o;
            if let (Action::Finish { answer }, None) = (&action, &performed.error) {
                return Ok((obs, Some(answer.clone()), None));
            }
            last = Some((action, performed));
        }
        if acted >= task.max_steps {
            traj.meta("max_steps_reached", true);
        }
        Ok((obs, None, None))
    }

    /// Performs one action, observes, records the step.
    async fn step(
        &self,
        task: &TaskSpec,
        session: &Session,
        traj: &mut Trajectory,
        action: &Action,
        deadline: Instant,
        auto: bool,
    ) -> Result<(Performed, Observation), InfraError> {
        let t0 = Instant::now();
        let timestamp = unix_now();
        let left = deadline.saturating_duration_since(t0);
        let budget = self
            .settings
            .action_timeout
            .min(left)
            .max(Duration::from_millis(100));
        let mut performed = exec::perform(session, action, budget)
            .await
            .map_err(infra)?;
        let acted_ms = t0.elapsed().as_millis() as u64;
        let mut ax: Option<AxRead> = None;
        let mut obs = match self.observe(session).await? {
            Ok((o, a)) if !session.crashed() => {
                ax = a;
                o
            }
            read => {
                // A page that crashed or cannot be read is a failed step,
                // never a successful one with nothing in it.
                let why = if session.crashed() {
                    "the page's renderer crashed (out of memory, or killed)".to_owned()
                } else {
                    format!(
                        "the page could not be read ({})",
                        read.err().unwrap_or_default()
                    )
                };
                if performed.error.is_none() {
                    performed.error = Some((ErrorType::BrowserError, why.clone()));
                }
                Observation {
                    text: format!("({why})"),
                    ..Default::default()
                }
            }
        };
        let step_id = traj.steps.len() as u32;
        let mut params = action.to_value();
        if auto {
            // The start_url navigation, added by the runtime (not the policy).
            params.insert("auto".into(), json!(true));
        }
        if let Some(ax) = ax {
            session.remember_nodes(ax.node_frames);
            if self.settings.max_raw_axtree_bytes > 0 {
                self.store_axtree(task, traj, step_id, &ax.raw).await;
            }
        }
        if self.settings.screenshots || self.settings.screenshots_to_model {
            let marks = match &obs.axtree {
                Some(view) if self.settings.screenshot_marks => {
                    let marks = crate::marks::of_view(view, self.settings.max_ax_nodes);
                    Some((view.viewport, marks))
                }
                _ => None,
            };
            if let Some((path, rel, png, marked)) =
                self.screenshot(task, session, step_id, marks).await
            {
                params.insert("screenshot".into(), json!(path));
                if let Some(n) = marked {
                    params.insert("screenshot_marks".into(), json!(n));
                }
                if self.settings.screenshots_to_model {
                    obs.screenshot = Some(Screenshot {
                        path: rel,
                        png: std::sync::Arc::new(png),
                    });
                }
            }
        }
        let (error_type, error_message) = match &performed.error {
            Some((t, m)) => (Some(*t), Some(m.clone())),
            None => (None, None),
        };
        traj.steps.push(ExecutionStep {
            step_id,
            action_type: ActionType::BrowserAction,
            action_params: params,
            observation: obs.render_capped(self.settings.max_bytes),
            success: performed.error.is_none(),
            error_type,
            error_message,
            timestamp,
            duration: t0.elapsed().as_secs_f64(),
        });
        tracing::debug!(task_id = %task.task_id, step_id, action = action.kind(), ok = performed.error.is_none(), act_ms = acted_ms, total_ms = t0.elapsed().as_millis() as u64, "Step done.");
        Ok((performed, obs))
    }

    /// Reads the page; retries if it was navigating. `Err(why)` inside when
    /// it cannot be read (an infrastructure error outside if the browser is
    /// dead).
    async fn observe(
        &self,
        session: &Session,
    ) -> Result<Result<(Observation, Option<AxRead>), String>, InfraError> {
        let mut why = "the page kept navigating".to_owned();
        for _ in 0..3 {
            let read = Observation::read_with(
                &session.page,
                &session.frame_id,
                self.settings.observation,
                self.settings.max_text,
                self.settings.max_elements,
                self.settings.max_ax_nodes,
            );
            match tokio::time::timeout(OBSERVE_TIMEOUT, read).await {
                Ok(Ok(o)) => return Ok(Ok(o)),
                Ok(Err(EvalError::Navigated)) => {
                    let before = session.events.snapshot();
                    let _ = session
                        .events
                        .settle(
                            &before,
                            Duration::from_secs(2),
                            false,
                            session.instance.dead_token(),
                        )
                        .await;
                }
                Ok(Err(EvalError::Cdp(e))) => {
                    if let BrowserError::Dead(why) =
                        session.instance.classify(BrowserError::Cdp(e.to_string()))
                    {
                        return Err(infra(BrowserError::Dead(why)));
                    }
                    tracing::debug!(error = %e, "Observation failed.");
                    why = e.to_string();
                    break;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "Observation failed.");
                    why = e.to_string();
                    break;
                }
                Err(_) => {
                    if session.instance.is_dead() {
                        return Err(infra(BrowserError::Dead(
                            session.instance.death().unwrap_or_default(),
                        )));
                    }
                    why = format!("reading it took longer than {OBSERVE_TIMEOUT:?}");
                    break;
                }
            }
        }
        crate::observe::cut(&mut why, 300);
        Ok(Err(why))
    }

    /// The directory of a task's step files (accessibility trees,
    /// screenshots) and its name: `<task_id>.files` in the default run's
    /// `trajectories/`, `<task_id>[@<rollout>].files` in its run's trajectory
    /// directory ([`adp_core::runs::artifacts_dir`]). Paths recorded in the
    /// trajectory are relative to that trajectory directory. `None` for an
    /// unsafe id.
    fn step_files_dir(&self, task: &TaskSpec) -> Option<(std::path::PathBuf, String)> {
        let dir = adp_core::runs::artifacts_dir(
            &self.settings.output_dir,
            task.run(),
            &task.task_id,
            task.rollout,
        )
        .ok()?;
        let name = dir.file_name()?.to_str()?.to_owned();
        Some((dir, name))
    }

    /// Writes the step's raw accessibility tree (compact JSON, capped) to
    /// `<step files dir>/step_<n>.axtree.json` ([`Self::step_files_dir`]:
    /// `$OUTPUT_DIR/trajectories/<task_id>.files/` in the default run) and lists
    /// it in `metadata.axtree_files` (path relative to the trajectory's directory).
    async fn store_axtree(&self, task: &TaskSpec, traj: &mut Trajectory, step: u32, raw: &Value) {
        let Some((dir, dir_name)) = self.step_files_dir(task) else {
            return;
        };
        let (bytes, cut) = axtree::raw_record(raw, self.settings.max_raw_axtree_bytes);
        let name = format!("step_{step}.axtree.json");
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "Cannot create the step files' directory.");
            return;
        }
        let path = dir.join(&name);
        if let Err(e) = tokio::fs::write(&path, &bytes).await {
            tracing::warn!(path = %path.display(), error = %e, "Cannot write an accessibility tree.");
            return;
        }
        let entry = json!({"step_id": step, "path": format!("{dir_name}/{name}"),
                           "bytes": bytes.len(), "cut": cut});
        match traj.metadata.get_mut("axtree_files") {
            Some(Value::Array(a)) => a.push(entry),
            _ => traj.meta("axtree_files", json!([entry])),
        }
    }

    /// `<step files dir>/step_<n>.png` ([`Self::step_files_dir`]:
    /// `$OUTPUT_DIR/trajectories/<task_id>.files/` in the default run): its path,
    /// its path relative to the trajectory's directory, its bytes, and how
    /// many set-of-marks were drawn on it (`marks`: the viewport the
    /// observation read and its marks;
    /// `None` when none were asked for or drawing failed); `None` if it
    /// failed.
    async fn screenshot(
        &self,
        task: &TaskSpec,
        session: &Session,
        step: u32,
        marks: Option<(crate::axtree::Viewport, Vec<crate::marks::Mark>)>,
    ) -> Option<(String, String, Vec<u8>, Option<usize>)> {
        use chromiumoxide::page::ScreenshotParams;
        let (dir, dir_name) = self.step_files_dir(task)?;
        let path = dir.join(format!("step_{step}.png"));
        let shot = tokio::time::timeout(
            OBSERVE_TIMEOUT,
            session.page.screenshot(ScreenshotParams::builder().build()),
        )
        .await;
        let bytes = match shot {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::debug!(task_id = %task.task_id, error = %e, "Screenshot failed.");
                return None;
            }
            Err(_) => return None,
        };
        let (bytes, marked) = match marks {
            // Decoding, drawing and encoding a PNG takes milliseconds of
            // CPU: off the runtime's thread.
            Some((viewport, marks)) => {
                let shot = std::sync::Arc::new(bytes);
                let plain = shot.clone();
                let n = marks.len();
                let drawn = tokio::task::spawn_blocking(move || {
                    crate::marks::draw(&plain, viewport, &marks)
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                match drawn {
                    Ok(marked) => (marked, Some(n)),
                    Err(e) => {
                        tracing::warn!(task_id = %task.task_id, error = %e, "Cannot draw the marks on a screenshot; the model gets it unmarked.");
                        (std::sync::Arc::unwrap_or_clone(shot), None)
                    }
                }
            }
            None => (bytes, None),
        };
        if let Err(e) = tokio::fs::create_dir_all(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %e, "Cannot create the screenshot directory.");
            return None;
        }
        if let Err(e) = tokio::fs::write(&path, &bytes).await {
            tracing::warn!(path = %path.display(), error = %e, "Cannot write a screenshot.");
            return None;
        }
        let rel = format!("{dir_name}/step_{step}.png");
        Some((path.display().to_string(), rel, bytes, marked))
    }
}
