//! Observations (CONTRACT §5): title, URL, visible text cut to a bound, and
//! a numbered list of interactive elements, rendered compactly enough to put
//! in an LLM prompt. Everything here is read from the page; nothing is made up.

use std::fmt::Write as _;

use chromiumoxide::Page;
use serde::{Deserialize, Serialize};

use crate::axtree::{self, AxRead, AxView, Viewport};
use crate::js;
use crate::page::{evaluate, EvalError};

/// What an observation shows (`WEB_OBSERVATION`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservationMode {
    /// Title, URL, visible text and the numbered interactive elements.
    Text,
    /// Title, URL and the accessibility tree with stable element ids.
    Axtree,
    /// Both: the text view, then the accessibility tree.
    #[default]
    Both,
}

impl ObservationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ObservationMode::Text => "text",
            ObservationMode::Axtree => "axtree",
            ObservationMode::Both => "both",
        }
    }

    /// Whether the accessibility tree is read.
    pub fn axtree(self) -> bool {
        self != ObservationMode::Text
    }
}

/// One interactive element.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Element {
    /// `link`, `button`, `input`, `select` or `textarea`.
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub href: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "type")]
    pub input_type: Option<String>,
    #[serde(default)]
    pub placeholder: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub options: Option<Vec<String>>,
    #[serde(default)]
    pub checked: Option<bool>,
    #[serde(default)]
    pub disabled: Option<bool>,
}

impl Element {
    /// Every text that names this element (for matching by the heuristic policy).
    pub fn names(&self) -> Vec<&str> {
        [
            &self.text,
            &self.name,
            &self.placeholder,
            &self.label,
            &self.id,
            &self.input_type,
        ]
        .into_iter()
        .filter_map(|s| s.as_deref())
        .collect()
    }

    /// One line: `link "Next" -> /page/2`, `input type=search name=q placeholder="Search"`.
    pub fn render(&self, base: &str) -> String {
        let mut s = self.kind.clone();
        if let Some(t) = self.input_type.as_deref().filter(|t| *t != "text") {
            let _ = write!(s, " type={t}");
        }
        if let Some(n) = &self.name {
            let _ = write!(s, " name={n}");
        }
        if let Some(t) = self.text.as_deref().filter(|t| !t.is_empty()) {
            let _ = write!(s, " {t:?}");
        }
        if let Some(l) = &self.label {
            let _ = write!(s, " label={l:?}");
        }
        if let Some(p) = &self.placeholder {
            let _ = write!(s, " placeholder={p:?}");
        }
        if let Some(o) = &self.options {
            let _ = write!(s, " options={o:?}");
        }
        if let Some(v) = &self.value {
            let key = if self.options.is_some() {
                "selected"
            } else {
                "value"
            };
            let _ = write!(s, " {key}={v:?}");
        }
        if let Some(c) = self.checked {
            s.push_str(if c { " (checked)" } else { " (unchecked)" });
        }
        if self.disabled == Some(true) {
            s.push_str(" (disabled)");
        }
        if let Some(h) = &self.href {
            let _ = write!(s, " -> {}", shorten_href(h, base));
        }
        s
    }
}

/// Longest title kept, in characters.
pub const MAX_TITLE: usize = 300;
/// Longest URL kept (the page's, a link's), in characters.
pub const MAX_URL: usize = 2000;
/// Longest link target shown, in characters.
pub const MAX_HREF: usize = 300;
/// Longest other element field (text, name, label, value...), in characters.
pub const MAX_FIELD: usize = 100;
/// Options of a select listed at most.
pub const MAX_OPTIONS: usize = 30;

/// `s` cut to `max` characters (an ellipsis marks the cut).
pub fn cut(s: &mut String, max: usize) {
    if let Some((at, _)) = s.char_indices().nth(max) {
        s.truncate(at);
        s.push('…');
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut_bytes(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

impl Element {
    /// Every field cut to its bound: whatever the page's script returned,
    /// an element stays small.
    fn bound(&mut self) {
        cut(&mut self.kind, 20);
        for f in [
            &mut self.text,
            &mut self.name,
            &mut self.input_type,
            &mut self.placeholder,
            &mut self.label,
            &mut self.id,
            &mut self.value,
        ]
        .into_iter()
        .flatten()
        {
            cut(f, MAX_FIELD);
        }
        if let Some(h) = &mut self.href {
            cut(h, MAX_HREF);
        }
        if let Some(o) = &mut self.options {
            o.truncate(MAX_OPTIONS);
            for v in o.iter_mut() {
                cut(v, 60);
            }
        }
    }
}

/// Same-origin links as a path, others as they are.
pub(crate) fn shorten_href<'a>(href: &'a str, page_url: &str) -> &'a str {
    let origin = |u: &str| -> Option<usize> {
        let after = u.find("://")? + 3;
        Some(u[after..].find('/').map_or(u.len(), |p| after + p))
    };
    match (origin(href), origin(page_url)) {
        (Some(a), Some(b)) if href[..a] == page_url[..b] && a < href.len() => &href[a..],
        _ => href,
    }
}

/// What the agent sees of a page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub title: String,
    pub url: String,
    /// Visible text, cut to the bound.
    pub text: String,
    /// Length of the whole visible text.
    pub text_len: usize,
    pub elements: Vec<Element>,
    /// Visible interactive elements on the page (the list may be cut).
    pub elements_total: usize,
    /// Size and scroll position of the viewport.
    #[serde(default)]
    pub viewport: Option<Viewport>,
    /// The accessibility-tree view (`WEB_OBSERVATION=axtree|both`).
    #[serde(skip)]
    pub axtree: Option<AxView>,
    /// Render without the text and the numbered elements (`axtree` mode;
    /// they are still read: the final state and the heuristic use them).
    #[serde(skip)]
    pub hide_text: bool,
    /// The step's screenshot, for the model (`WEB_SCREENSHOTS=model`).
    #[serde(skip)]
    pub screenshot: Option<Screenshot>,
}

/// A step's screenshot as stored with the trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct Screenshot {
    /// Path relative to `$OUTPUT_DIR/trajectories/` (`<task_id>/step_<n>.png`).
    pub path: String,
    pub png: std::sync::Arc<Vec<u8>>,
}

impl Observation {
    /// A session's page before its first action: it is created on
    /// `about:blank` and nothing has run on it, so there is nothing to read
    /// (saves a CDP round trip and a script run per task).
    pub fn blank_page() -> Self {
        Observation {
            url: "about:blank".to_owned(),
            ..Default::default()
        }
    }

    /// Reads the page. `Err` when the page could not be read (it is
    /// navigating, or the browser is gone).
    pub async fn read(
        page: &Page,
        max_text: usize,
        max_elements: usize,
    ) -> Result<Observation, EvalError> {
        let v = evaluate(
            page,
            js::call(js::OBSERVE, format!("{max_text}, {max_elements}")),
        )
        .await?;
        let mut o: Observation = serde_json::from_value(v)
            .map_err(|e| EvalError::Exception(format!("unexpected observation shape: {e}")))?;
        o.bound(max_text, max_elements);
        Ok(o)
    }

    /// Reads the page as `mode` says: the text view (always: the final
    /// state and the heuristic policy use it) and, for `axtree`/`both`, the
    /// accessibility tree, both at once. Also gives the tree's raw form and
    /// the frame of each addressable node.
    pub async fn read_with(
        page: &Page,
        main_frame: &str,
        mode: ObservationMode,
        max_text: usize,
        max_elements: usize,
        max_ax_nodes: usize,
    ) -> Result<(Observation, Option<AxRead>), EvalError> {
        if !mode.axtree() {
            return Ok((Self::read(page, max_text, max_elements).await?, None));
        }
        let text = Self::read(page, max_text, max_elements);
        let tree = axtree::read(page, main_frame, Viewport::default());
        let (o, ax) = futures::join!(text, tree);
        let mut o = o?;
        let mut ax = match ax {
            Ok(ax) => ax,
            Err(e) => {
                let m = e.to_string();
                return Err(if m.contains("navigat") || m.contains("No frame") {
                    EvalError::Navigated
                } else {
                    EvalError::Cdp(e)
                });
            }
        };
        if let Some(vp) = o.viewport.as_mut() {
            vp.page_height = ax.view.viewport.page_height.max(vp.page_height);
            ax.view.set_viewport(*vp);
        }
        ax.view.max_nodes = max_ax_nodes;
        o.axtree = Some(ax.view.clone());
        o.hide_text = mode == ObservationMode::Axtree;
        Ok((o, Some(ax)))
    }

    /// Every field cut to its bound, in Rust: the page cannot make an
    /// observation bigger than the bounds say.
    pub fn bound(&mut self, max_text: usize, max_elements: usize) {
        cut(&mut self.title, MAX_TITLE);
        cut(&mut self.url, MAX_URL);
        if let Some((at, _)) = self.text.char_indices().nth(max_text) {
            self.text.truncate(at);
        }
        self.text_len = self.text_len.max(self.text.chars().count());
        self.elements_total = self.elements_total.max(self.elements.len());
        self.elements.truncate(max_elements);
        for e in &mut self.elements {
            e.bound();
        }
        if let Some(v) = &mut self.viewport {
            for f in [
                &mut v.width,
                &mut v.height,
                &mut v.scroll_x,
                &mut v.scroll_y,
            ] {
                if !f.is_finite() {
                    *f = 0.0;
                }
                *f = f.clamp(0.0, 1e7);
            }
        }
    }

    /// [`Self::render`] cut to `max_bytes` (the cut is marked; the
    /// accessibility tree gets what the text view leaves, whole lines).
    pub fn render_capped(&self, max_bytes: usize) -> String {
        let mut s = self.render_within(max_bytes);
        if s.len() > max_bytes {
            let note = format!(
                "\n[… observation cut at {max_bytes} bytes of {}]\n",
                s.len()
            );
            cut_bytes(&mut s, max_bytes.saturating_sub(note.len()));
            s.push_str(&note);
        }
        s
    }

    /// The text as it goes into a step and a prompt.
    pub fn render(&self) -> String {
        self.render_within(usize::MAX)
    }

    fn render_within(&self, max_bytes: usize) -> String {
        let mut s = String::with_capacity(self.text.len() + 64 * self.elements.len() + 128);
        let _ = writeln!(s, "Title: {}", self.title);
        let _ = writeln!(s, "URL: {}", self.url);
        if !self.hide_text {
            self.render_text(&mut s);
        }
        if let Some(ax) = &self.axtree {
            let left = max_bytes.saturating_sub(s.len());
            s.push_str(&ax.render(&self.url, ax.max_nodes, left));
        }
        s
    }

    fn render_text(&self, s: &mut String) {
        s.push_str("Text:\n");
        s.push_str(&self.text);
        if self.text_len > self.text.chars().count() {
            let _ = write!(
                s,
                "\n[… text cut: {} of {} characters shown]",
                self.text.chars().count(),
                self.text_len
            );
        }
        s.push('\n');
        if self.elements.is_empty() {
            s.push_str("Elements: none\n");
        } else {
            s.push_str("Elements:\n");
            for (i, e) in self.elements.iter().enumerate() {
                let _ = writeln!(s, "[{i}] {}", e.render(&self.url));
            }
            if self.elements_total > self.elements.len() {
                let _ = writeln!(
                    s,
                    "[… {} more elements not listed]",
                    self.elements_total - self.elements.len()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_compactly() {
        let o = Observation {
            title: "Demo".into(),
            url: "http://127.0.0.1:8000/index.html".into(),
            text: "Hello".into(),
            text_len: 10,
            elements: vec![
                Element {
                    kind: "link".into(),
                    text: Some("Books".into()),
                    href: Some("http://127.0.0.1:8000/list.html?c=books".into()),
                    ..Default::default()
                },
                Element {
                    kind: "input".into(),
                    input_type: Some("search".into()),
                    name: Some("q".into()),
                    placeholder: Some("Search".into()),
                    ..Default::default()
                },
                Element {
                    kind: "select".into(),
                    name: Some("color".into()),
                    options: Some(vec!["red".into(), "green".into()]),
                    value: Some("red".into()),
                    ..Default::default()
                },
                Element {
                    kind: "link".into(),
                    text: Some("Elsewhere".into()),
                    href: Some("https://example.org/x".into()),
                    ..Default::default()
                },
            ],
            elements_total: 5,
            ..Default::default()
        };
        let r = o.render();
        assert!(r.starts_with("Title: Demo\nURL: http://127.0.0.1:8000/index.html\nText:\nHello\n[… text cut: 5 of 10 characters shown]\n"), "{r}");
        assert!(
            r.contains("[0] link \"Books\" -> /list.html?c=books\n"),
            "{r}"
        );
        assert!(
            r.contains("[1] input type=search name=q placeholder=\"Search\"\n"),
            "{r}"
        );
        assert!(
            r.contains("[2] select name=color options=[\"red\", \"green\"] selected=\"red\"\n"),
            "{r}"
        );
        assert!(
            r.contains("[3] link \"Elsewhere\" -> https://example.org/x\n"),
            "{r}"
        );
        assert!(r.ends_with("[… 1 more elements not listed]\n"), "{r}");
    }

    #[test]
    fn every_field_is_cut_in_rust_and_the_whole_is_capped() {
        let huge = "é".repeat(100_000);
        let mut o = Observation {
            title: huge.clone(),
            url: huge.clone(),
            text: huge.clone(),
            text_len: 5,
            elements: (0..500)
                .map(|_| Element {
                    kind: huge.clone(),
                    text: Some(huge.clone()),
                    href: Some(huge.clone()),
                    options: Some(vec![huge.clone(); 100]),
                    ..Default::default()
                })
                .collect(),
            elements_total: 0,
            ..Default::default()
        };
        o.bound(4000, 60);
        assert!(o.title.chars().count() <= MAX_TITLE + 1);
        assert!(o.url.chars().count() <= MAX_URL + 1);
        assert_eq!(o.text.chars().count(), 4000);
        assert_eq!(o.text_len, 4000);
        assert_eq!(o.elements.len(), 60);
        assert_eq!(o.elements_total, 500);
        let e = &o.elements[0];
        assert!(e.href.as_ref().expect("href").chars().count() <= MAX_HREF + 1);
        assert_eq!(e.options.as_ref().expect("options").len(), MAX_OPTIONS);
        let r = o.render_capped(32_768);
        assert!(r.len() <= 32_768, "{}", r.len());
        assert!(r.contains("[… observation cut at 32768 bytes of"), "{r}");
    }
}
