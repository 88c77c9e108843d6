//! Observations (CONTRACT §5): title, URL, visible text cut to a bound, and
//! a numbered list of interactive elements, rendered compactly enough to put
//! in an LLM prompt. Everything here is read from the page; nothing is made up.

use std::fmt::Write as _;

use chromiumoxide::Page;
use serde::{Deserialize, Serialize};

use crate::js;
use crate::page::{evaluate, EvalError};

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

/// Same-origin links as a path, others as they are.
fn shorten_href<'a>(href: &'a str, page_url: &str) -> &'a str {
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
        serde_json::from_value(v)
            .map_err(|e| EvalError::Exception(format!("unexpected observation shape: {e}")))
    }

    /// The text as it goes into a step and a prompt.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(self.text.len() + 64 * self.elements.len() + 128);
        let _ = writeln!(s, "Title: {}", self.title);
        let _ = writeln!(s, "URL: {}", self.url);
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
        s
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
}
