//! `adp export`: every trajectory into one JSONL dataset.
//!
//! Streams the directory one file at a time (memory does not grow with the
//! number of trajectories), skips and reports unusable files instead of
//! stopping, writes to a temp file next to `--out` and renames it at the end
//! (a crashed export leaves no half dataset), then prints a summary.
//!
//! Formats (one JSON object per line):
//! * `trajectory`: the trajectory file as is (every field, compact);
//! * `messages`: the labels (below), `tools` and `messages`, see
//!   [`chat::to_messages`];
//! * `sharegpt`: the labels, `conversations` and `tools`, see [`chat::to_sharegpt`];
//! * `rl`: the labels and the tokens of every model call, see [`rl`].
//!
//! Every `messages`, `sharegpt` and `rl` row carries the labels `task_id`,
//! `task_type`, `policy`, `model`, `success`, `reward`, `error_type` and
//! `source` (`llm`: from the recorded model calls, [`recorded`];
//! `synthetic`: rendered from the steps, [`synthetic`]). Trajectories that
//! failed for infrastructure reasons (`system_error`) are left out of every
//! format unless asked for.

pub mod calls;
pub mod chat;
pub mod recorded;
pub mod rl;
pub mod synthetic;

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use adp_core::TaskType;
use serde::Serialize;
use serde_json::{json, Map, Value};

use calls::Calls;

use crate::error::{CliError, Outcome, Result};
use crate::files::{self, Skips};
use crate::progress;
use crate::view::TrajView;
use crate::Env;

/// Output format of `adp export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The trajectory files as they are, one per line.
    Trajectory,
    /// OpenAI chat format with tool calls and tool definitions (for TRL and other SFT tools).
    Messages,
    /// ShareGPT `conversations` (LLaMA-Factory, axolotl).
    Sharegpt,
    /// Per model call: prompt and completion token ids, completion mask and
    /// logprobs; and the reward (GRPO-style trainers).
    Rl,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Trajectory => "trajectory",
            Format::Messages => "messages",
            Format::Sharegpt => "sharegpt",
            Format::Rl => "rl",
        }
    }
}

/// What `adp export` does with the images a model was sent (web tasks
/// with `WEB_SCREENSHOTS=model`), which the trajectory stores once as files
/// and references as `adp-file:<path>` URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Images {
    /// The `messages` rows carry each image as the data URL the model was
    /// sent (`data:image/png;base64,...`): self-contained rows.
    Inline,
    /// The rows keep the `adp-file:` references (relative to the directory
    /// of the trajectory file): small rows, the images stay on disk.
    Reference,
}

/// Why a row with image references was not written: a referenced file is
/// missing or unreadable (`--images inline`).
pub const MISSING_IMAGE: &str = "missing_image";

/// Export trajectories into one JSONL dataset.
#[derive(Debug, clap::Args)]
#[command(
    about = "Write every trajectory into one JSONL dataset (trajectory, messages, sharegpt or rl format)",
    long_about = "Write every trajectory into one JSONL dataset.\n\n\
Formats:\n  \
trajectory  each trajectory file as one line, all fields kept\n  \
messages    OpenAI chat format: {\"tools\": [JSON schemas], \"messages\": [system, user, \
(assistant with tool_calls, tool)..., assistant]} — ready for TRL's SFTTrainer\n  \
sharegpt    {\"conversations\": [{\"from\": system|human|function_call|observation|gpt, \
\"value\": ...}], \"tools\": \"<JSON>\"}\n  \
rl          per model call: prompt_ids, completion_ids, completion_mask, completion_logprobs; \
and the reward\n\n\
Images: a web task run with WEB_SCREENSHOTS=model sent the model its screenshots as image \
parts; the trajectory stores each once as a file. With --images inline (the default) the \
messages rows carry them as the data URLs the model was sent; with --images reference they \
keep the adp-file:<path> references (relative to the trajectory's directory). sharegpt keeps \
the text parts only. Rows with images mix string and list contents; add --content-as-parts \
(and --tools-as-json-string) for Hugging Face datasets.\n\n\
A trajectory with recorded model calls (metadata.llm_calls) is exported as the model saw it: \
the messages of its last call plus the reply (\"source\": \"llm\"); one without is rendered \
from its steps (\"source\": \"synthetic\"). Rows carry task_id, task_type, policy, model, \
success, reward, error_type and source. Infrastructure failures (system_error) are left out \
unless --include-infra-failures.\n\n\
Files are read one at a time (memory does not grow with their number). Unusable files \
(invalid JSON, not a trajectory) are skipped and listed in the summary; the export never \
stops half way. The dataset is written to a temp file and renamed over --out at the end.",
    after_help = "Examples:\n  \
adp export --out data.jsonl\n  \
adp export --out sft.jsonl --format messages --success-only --min-steps 2\n  \
adp export --out web.jsonl --format sharegpt --task-type web\n  \
adp export --out hf.jsonl --format messages --source llm --tools-as-json-string\n  \
adp export --out grpo.jsonl --format rl\n  \
adp export --out vlm.jsonl --format messages --task-type web --content-as-parts --tools-as-json-string\n  \
adp export --out - --format messages | head -1 | jq ."
)]
pub struct ExportArgs {
    /// Dataset file to write (`-` writes to standard output).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Line format.
    #[arg(long, value_enum, default_value = "trajectory")]
    pub format: Format,
    /// Only trajectories with `success: true`.
    #[arg(long)]
    pub success_only: bool,
    /// Only this task type.
    #[arg(long, value_parser = ["code", "web", "reasoning"])]
    pub task_type: Option<String>,
    /// Only trajectories with at least N steps.
    #[arg(long, value_name = "N")]
    pub min_steps: Option<usize>,
    /// Only conversations of this source: `llm` (recorded model calls) or
    /// `synthetic` (rendered from the steps).
    #[arg(long, value_enum)]
    pub source: Option<chat::Source>,
    /// Also export trajectories that failed for infrastructure reasons
    /// (`error_type: system_error`).
    #[arg(long)]
    pub include_infra_failures: bool,
    /// Also export archived attempts (`<task_id>.attempt-N.json`).
    #[arg(long)]
    pub include_attempts: bool,
    /// How tool-call arguments are written in the `messages` format.
    #[arg(long, value_enum, default_value = "object")]
    pub tool_arguments: chat::ArgumentsAs,
    /// Write `tools` and every tool call's `arguments` as JSON strings
    /// (`messages`; `sharegpt` always does): Hugging Face `datasets` 3.x
    /// otherwise merges all tool schemas and arguments into one struct and
    /// pads each with nulls.
    #[arg(long)]
    pub tools_as_json_string: bool,
    /// Write every text `content` of the `messages` format as a list of one
    /// text part, as messages with images have (Hugging Face `datasets`
    /// needs one type per column; use it for web rows with screenshots).
    #[arg(long)]
    pub content_as_parts: bool,
    /// Images sent to the model (`messages`): `inline` as the data URLs
    /// sent, or `reference` (`adp-file:` paths relative to the trajectory's
    /// directory).
    #[arg(long, value_enum, default_value = "inline")]
    pub images: Images,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Trajectories left out by a filter.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Filtered {
    pub total: u64,
    pub not_successful: u64,
    pub task_type: u64,
    pub min_steps: u64,
    /// `system_error` trajectories (left out unless `--include-infra-failures`).
    pub infra_failure: u64,
    /// Another source than `--source`.
    pub source: u64,
}

/// What an export did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub out: String,
    pub format: Format,
    pub files_seen: u64,
    pub written: u64,
    pub bytes: u64,
    pub filtered: Filtered,
    /// Trajectories that cannot be put in the chosen format, by reason
    /// (`missing_task`: the file holds no task, so there is no user turn;
    /// `no_model_reply`: model calls were recorded but none was answered;
    /// `bad_llm_calls`: the record cannot be read; `no_token_ids`: no token
    /// ids for `rl`; `token_logprob_mismatch`; `missing_image`: an image the
    /// model was sent cannot be read for `--images inline`).
    pub unconvertible: BTreeMap<&'static str, u64>,
    pub skipped: Skips,
    pub seconds: f64,
}

/// The filters of one export.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub success_only: bool,
    pub task_type: Option<TaskType>,
    pub min_steps: Option<usize>,
    pub source: Option<chat::Source>,
    pub include_infra_failures: bool,
}

/// The failure label of infrastructure failures.
const SYSTEM_ERROR: &str = "system_error";

impl Filters {
    /// Which filter drops `t`, if any.
    fn reject(&self, t: &TrajView, source: chat::Source, f: &mut Filtered) -> bool {
        let hit = if !self.include_infra_failures && t.failure_label() == Some(SYSTEM_ERROR) {
            Some(&mut f.infra_failure)
        } else if self.source.is_some_and(|s| s != source) {
            Some(&mut f.source)
        } else if self.success_only && !t.success {
            Some(&mut f.not_successful)
        } else if self.task_type.is_some() && t.task_type() != self.task_type {
            Some(&mut f.task_type)
        } else if self.min_steps.is_some_and(|n| t.steps.len() < n) {
            Some(&mut f.min_steps)
        } else {
            None
        };
        match hit {
            Some(counter) => {
                *counter += 1;
                f.total += 1;
                true
            }
            None => false,
        }
    }
}

/// The recorded calls of a trajectory: none, readable, or a damaged record.
type Record = Result<Option<Calls>, &'static str>;

/// Where the conversation of a trajectory comes from: `llm` when its model
/// calls were recorded (a damaged record too: it is reported, not rendered
/// as if no model had been asked) and at least one was answered.
pub fn source(record: &Record) -> chat::Source {
    match record {
        Ok(Some(c)) if c.last_answered().is_none() => chat::Source::Synthetic,
        Ok(Some(_)) | Err(_) => chat::Source::Llm,
        Ok(None) => chat::Source::Synthetic,
    }
}

/// The labels every `messages`, `sharegpt` and `rl` row starts with.
pub fn labels(
    raw: &Value,
    t: &TrajView,
    calls: Option<&Calls>,
    source: chat::Source,
) -> Map<String, Value> {
    let model = t
        .metadata
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .or_else(|| calls.and_then(Calls::model));
    let mut m = Map::new();
    m.insert("task_id".into(), json!(t.task_id));
    m.insert("task_type".into(), json!(t.task_type_label()));
    m.insert("policy".into(), json!(t.policy()));
    m.insert("model".into(), json!(model));
    m.insert("success".into(), json!(t.success));
    m.insert(
        "reward".into(),
        json!(raw.get("reward").and_then(Value::as_f64)),
    );
    m.insert(
        "error_type".into(),
        json!(t.error_type.as_deref().filter(|e| !e.is_empty())),
    );
    m.insert("source".into(), json!(source.as_str()));
    m
}

/// One output line for `t` (`Err(reason)` when it cannot be converted).
pub fn line(
    format: Format,
    raw: Value,
    t: &TrajView,
    record: &Record,
    rendering: chat::Rendering,
) -> Result<Value, &'static str> {
    let source = source(record);
    let calls = match (format, record) {
        (Format::Trajectory, _) => return Ok(raw),
        (_, Err(reason)) => return Err(reason),
        (_, Ok(calls)) => calls.as_ref(),
    };
    let mut row = labels(&raw, t, calls, source);
    let dialog = || match calls {
        Some(c) if source == chat::Source::Llm => recorded::build(c),
        _ => synthetic::build(t).ok_or("missing_task"),
    };
    match format {
        Format::Trajectory => return Ok(raw),
        Format::Messages => {
            let (messages, tools) = chat::to_messages(&dialog()?, rendering);
            row.insert("tools".into(), tools);
            row.insert("messages".into(), messages);
        }
        Format::Sharegpt => {
            let (conversations, tools) = chat::to_sharegpt(&dialog()?);
            row.insert("conversations".into(), conversations);
            row.insert("tools".into(), tools);
        }
        Format::Rl => {
            let calls = calls.ok_or(rl::NO_TOKEN_IDS)?;
            let reward = row.get("reward").and_then(Value::as_f64);
            row.extend(rl::fields(calls, reward, t.success)?);
        }
    }
    Ok(Value::Object(row))
}

/// Counts bytes going through a writer.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Exports into `out`; returns the summary (with `out` left for the caller to fill).
pub fn export_to(env: &Env, args: &ExportArgs, out: impl Write) -> Result<Summary> {
    let started = Instant::now();
    let filters = Filters {
        success_only: args.success_only,
        task_type: args.task_type.as_deref().and_then(TaskType::parse),
        min_steps: args.min_steps,
        source: args.source,
        include_infra_failures: args.include_infra_failures,
    };
    let rendering = chat::Rendering {
        arguments: if args.tools_as_json_string {
            chat::ArgumentsAs::String
        } else {
            args.tool_arguments
        },
        tools_as_string: args.tools_as_json_string,
        content_as_parts: args.content_as_parts,
    };
    let dir = env.trajectories_dir();
    let bar = if progress::stderr_is_terminal() {
        let n = files::count(&dir, args.include_attempts).unwrap_or(0);
        Some(progress::bar(n, "files"))
    } else {
        None
    };
    let mut out = Counting {
        inner: BufWriter::with_capacity(256 * 1024, out),
        bytes: 0,
    };
    let mut summary = Summary {
        out: String::new(),
        format: args.format,
        files_seen: 0,
        written: 0,
        bytes: 0,
        filtered: Filtered::default(),
        unconvertible: BTreeMap::new(),
        skipped: Skips::default(),
        seconds: 0.0,
    };
    let list_err = |e: io::Error| CliError::failure(format!("cannot list {}: {e}", dir.display()));
    for file in files::walk(&dir, args.include_attempts).map_err(list_err)? {
        let file = file.map_err(list_err)?;
        summary.files_seen += 1;
        if let Some(b) = &bar {
            b.inc(1);
        }
        let (raw, view) = match files::load_full(&file.path) {
            Ok(x) => x,
            Err(why) => {
                summary.skipped.add(&file, &why);
                continue;
            }
        };
        // The `trajectory` format reads the call record only to filter by source.
        let mut record = if args.format != Format::Trajectory || filters.source.is_some() {
            Calls::of(&view.metadata)
        } else {
            Ok(None)
        };
        if filters.reject(&view, source(&record), &mut summary.filtered) {
            continue;
        }
        if let (Format::Messages, Images::Inline, Ok(Some(calls))) =
            (args.format, args.images, &mut record)
        {
            let dir = file.path.parent().unwrap_or(&dir);
            if let Err(why) = calls.inline_files(dir) {
                tracing::warn!(file = %file.path.display(), error = %why, "An image the model was sent cannot be read; the row is left out (--images reference keeps the references).");
                *summary.unconvertible.entry(MISSING_IMAGE).or_default() += 1;
                continue;
            }
        }
        match line(args.format, raw, &view, &record, rendering) {
            Ok(v) => {
                serde_json::to_writer(&mut out, &v)?;
                out.write_all(b"\n")?;
                summary.written += 1;
            }
            Err(reason) => *summary.unconvertible.entry(reason).or_default() += 1,
        }
    }
    out.flush()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    summary.bytes = out.bytes;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

pub fn run(env: &Env, args: ExportArgs) -> Result<Outcome> {
    env.check_output_dir()?;
    let to_stdout = args.out.as_os_str() == "-";
    let mut summary = if to_stdout {
        let stdout = io::stdout();
        export_to(env, &args, stdout.lock())?
    } else {
        let parent = match args.out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".adp-export-")
            .tempfile_in(&parent)
            .map_err(|e| CliError::failure(format!("cannot write in {}: {e}", parent.display())))?;
        let summary = export_to(env, &args, tmp.as_file())?;
        tmp.as_file().sync_all()?;
        tmp.persist(&args.out).map_err(|e| {
            CliError::failure(format!("cannot write {}: {}", args.out.display(), e.error))
        })?;
        summary
    };
    summary.out = args.out.display().to_string();
    let report = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&summary)?)
    } else {
        render(&summary)
    };
    // The summary never mixes with a dataset written to stdout.
    if to_stdout {
        eprint!("{report}");
    } else {
        print!("{report}");
    }
    Ok(Outcome::Done)
}

/// The text summary.
pub fn render(s: &Summary) -> String {
    let format = s.format.as_str();
    let mut out = format!(
        "Exported {} trajectories to {} (format {format}, {} bytes, {:.2}s).\n",
        s.written, s.out, s.bytes, s.seconds
    );
    out.push_str(&format!("Files read: {}.\n", s.files_seen));
    if s.filtered.total > 0 {
        let f = &s.filtered;
        out.push_str(&format!(
            "Filtered out: {} (infrastructure failures {}, other source {}, not successful {}, \
             other task type {}, fewer steps {}).\n",
            f.total, f.infra_failure, f.source, f.not_successful, f.task_type, f.min_steps
        ));
    }
    for (reason, n) in &s.unconvertible {
        out.push_str(&format!("Not convertible to {format}: {n} ({reason}).\n"));
    }
    out.push_str(&s.skipped.report());
    out
}
