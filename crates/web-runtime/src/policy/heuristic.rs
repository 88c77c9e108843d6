//! The `heuristic` policy: the offline default. It reads the task's
//! description for one of a few intents and acts on what the observation
//! shows:
//!
//! * "search (for) X": finds the page's search box among the elements and
//!   submits X (then, for "... and open/click Y", clicks the best link);
//! * "click / open / follow X": clicks the link or button whose text best
//!   matches X;
//! * "select X": picks the option X in the select that offers it;
//! * otherwise: reads the page and finishes with its text.
//!
//! When the page lacks what the intent needs, it gives up and says so; it
//! never invents an answer.

use super::{Decision, Turn};
use crate::actions::{Action, Target};
use crate::observe::{Element, Observation};

/// Longest answer taken from the page text.
const ANSWER_CHARS: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Intent {
    Search { terms: String, then: Option<String> },
    Open { target: String },
    Select { value: String },
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Searched,
    Opened,
    Extracted,
}

pub struct Heuristic {
    intent: Intent,
    phase: Phase,
}

impl Heuristic {
    pub fn new(description: &str) -> Self {
        Heuristic {
            intent: parse_intent(description),
            phase: Phase::Start,
        }
    }

    /// The intent read from the description, for logs and metadata.
    pub fn intent(&self) -> String {
        match &self.intent {
            Intent::Search { terms, then } => match then {
                Some(t) => format!("search {terms:?}, then open {t:?}"),
                None => format!("search {terms:?}"),
            },
            Intent::Open { target } => format!("open {target:?}"),
            Intent::Select { value } => format!("select {value:?}"),
            Intent::Read => "read the page".to_owned(),
        }
    }

    pub fn next(&mut self, turn: &Turn<'_>) -> Decision {
        if let Some((action, performed)) = turn.last {
            if let Some((_, msg)) = &performed.error {
                return Decision::GiveUp(format!("{} failed: {msg}", action.kind()));
            }
        }
        let obs = turn.observation;
        match (&self.intent, self.phase) {
            (Intent::Search { terms, .. }, Phase::Start) => {
                self.phase = Phase::Searched;
                match find_search_box(obs) {
                    Some(i) => Decision::Act(Action::FillAndSubmit {
                        target: Target::Element(i),
                        text: terms.clone(),
                    }),
                    None => Decision::GiveUp(format!(
                        "no search box among the {} elements of {}",
                        obs.elements.len(),
                        obs.url
                    )),
                }
            }
            (
                Intent::Search {
                    then: Some(t),
                    terms,
                },
                Phase::Searched,
            ) => {
                self.phase = Phase::Opened;
                let target = if is_first_result(t) { terms } else { t };
                match best_link(obs, target) {
                    Some(i) => Decision::Act(Action::Click {
                        target: Target::Element(i),
                    }),
                    None => Decision::GiveUp(format!("no link matching {t:?} on {}", obs.url)),
                }
            }
            (Intent::Open { target }, Phase::Start) => {
                self.phase = Phase::Opened;
                match best_link(obs, target) {
                    Some(i) => Decision::Act(Action::Click {
                        target: Target::Element(i),
                    }),
                    None => Decision::GiveUp(format!(
                        "no link or button matching {target:?} on {}",
                        obs.url
                    )),
                }
            }
            (Intent::Select { value }, Phase::Start) => {
                self.phase = Phase::Opened;
                match find_select(obs, value) {
                    Some((i, option)) => Decision::Act(Action::Select {
                        target: Target::Element(i),
                        value: option,
                    }),
                    None => {
                        Decision::GiveUp(format!("no select offering {value:?} on {}", obs.url))
                    }
                }
            }
            (_, Phase::Extracted) => Decision::Act(Action::Finish {
                answer: answer_from(obs),
            }),
            _ => {
                self.phase = Phase::Extracted;
                Decision::Act(Action::Extract)
            }
        }
    }
}

/// The page's own text as the answer (cut).
fn answer_from(obs: &Observation) -> String {
    let text: String = obs.text.chars().take(ANSWER_CHARS).collect();
    if text.trim().is_empty() {
        format!("{} ({})", obs.title, obs.url)
    } else {
        text
    }
}

fn is_first_result(t: &str) -> bool {
    let t = t.to_lowercase();
    t.contains("first") && (t.contains("result") || t.contains("link") || t.contains("hit"))
}

/// Text in quotes, if the description has some.
fn quoted(s: &str) -> Option<String> {
    for (open, close) in [
        ('"', '"'),
        ('\'', '\''),
        ('“', '”'),
        ('‘', '’'),
        ('「', '」'),
    ] {
        if let Some(a) = s.find(open) {
            let rest = &s[a + open.len_utf8()..];
            if let Some(b) = rest.find(close) {
                let q = rest[..b].trim();
                if !q.is_empty() {
                    return Some(q.to_owned());
                }
            }
        }
    }
    None
}

/// Cuts a phrase at the first word that starts another clause.
fn clause(s: &str) -> String {
    const STOPS: [&str; 11] = [
        " on ", " in ", " at ", " using ", " and ", " then ", " from ", " with ", ",", ".", ";",
    ];
    let lower = s.to_lowercase();
    let end = STOPS
        .iter()
        .filter_map(|w| lower.find(w))
        .min()
        .unwrap_or(s.len());
    let mut out = s[..end]
        .trim()
        .trim_matches(|c| c == '"' || c == '\'')
        .trim();
    for article in ["the ", "a ", "an "] {
        if out.len() > article.len() && out[..article.len()].eq_ignore_ascii_case(article) {
            out = out[article.len()..].trim();
        }
    }
    out.to_owned()
}

/// The text after the first of `keywords` found in `s` (case-insensitive).
fn after_keyword<'a>(s: &'a str, keywords: &[&str]) -> Option<&'a str> {
    let lower = s.to_lowercase();
    keywords
        .iter()
        .filter_map(|k| lower.find(k).map(|p| (p, k.len())))
        .min_by_key(|(p, _)| *p)
        .map(|(p, len)| &s[p + len..])
}

fn parse_intent(description: &str) -> Intent {
    let d = description.trim();
    const SEARCH: [&str; 7] = [
        "search for ",
        "search ",
        "look up ",
        "lookup ",
        "query ",
        "find ",
        "搜索",
    ];
    const OPEN: [&str; 7] = [
        "click on ",
        "click ",
        "open ",
        "follow ",
        "go to ",
        "navigate to ",
        "visit ",
    ];
    if let Some(rest) = after_keyword(d, &SEARCH) {
        // "search the catalogue for X": the terms follow "for".
        let said_for = d.to_lowercase().contains("search for ");
        let subject = match after_keyword(rest, &[" for "]) {
            Some(after) if !said_for && quoted(rest).is_none() => after,
            _ => rest,
        };
        let terms = quoted(rest).unwrap_or_else(|| clause(subject));
        if !terms.is_empty() {
            let then = after_keyword(rest, &OPEN).map(|r| quoted(r).unwrap_or_else(|| clause(r)));
            return Intent::Search {
                terms,
                then: then.filter(|t| !t.is_empty()),
            };
        }
    }
    if let Some(rest) = after_keyword(d, &["select ", "choose ", "pick "]) {
        let value = quoted(rest).unwrap_or_else(|| clause(rest));
        if !value.is_empty() {
            return Intent::Select { value };
        }
    }
    if let Some(rest) = after_keyword(d, &OPEN) {
        let target = quoted(rest).unwrap_or_else(|| clause(rest));
        let generic = ["page", "the page", "website", "site", "url"];
        if !target.is_empty() && !generic.contains(&target.to_lowercase().as_str()) {
            return Intent::Open { target };
        }
    }
    Intent::Read
}

fn words(s: &str) -> Vec<String> {
    const STOP: [&str; 12] = [
        "the", "a", "an", "link", "page", "to", "on", "of", "for", "button", "called", "named",
    ];
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !STOP.contains(w))
        .map(str::to_owned)
        .collect()
}

/// The index of the element that looks most like a search box.
fn find_search_box(obs: &Observation) -> Option<usize> {
    let is_text_field = |e: &Element| {
        (e.kind == "input"
            && matches!(e.input_type.as_deref(), None | Some("text" | "search" | "")))
            || e.kind == "textarea"
    };
    let fields: Vec<(usize, &Element)> = obs
        .elements
        .iter()
        .enumerate()
        .filter(|(_, e)| is_text_field(e) && e.disabled != Some(true))
        .collect();
    let score = |e: &Element| {
        let mut s = 0;
        if e.input_type.as_deref() == Some("search") {
            s += 5;
        }
        if let Some(n) = e.name.as_deref() {
            if [
                "q", "query", "search", "s", "keyword", "keywords", "term", "k", "wd",
            ]
            .contains(&n.to_lowercase().as_str())
            {
                s += 4;
            }
        }
        let hay = e.names().join(" ").to_lowercase();
        if ["search", "query", "find", "look up", "搜索"]
            .iter()
            .any(|k| hay.contains(k))
        {
            s += 3;
        }
        s
    };
    let best = fields
        .iter()
        .map(|(i, e)| (*i, score(e)))
        .max_by_key(|(i, s)| (*s, std::cmp::Reverse(*i)));
    match best {
        Some((i, s)) if s > 0 => Some(i),
        // A page with a single text field: that is the box.
        _ if fields.len() == 1 => Some(fields[0].0),
        _ => None,
    }
}

/// The link or button whose text best matches `target` (share of the
/// target's words found; ties go to the earlier element).
fn best_link(obs: &Observation, target: &str) -> Option<usize> {
    let want = words(target);
    if want.is_empty() {
        return None;
    }
    let mut best: Option<(usize, f64)> = None;
    for (i, e) in obs.elements.iter().enumerate() {
        if e.kind != "link" && e.kind != "button" {
            continue;
        }
        let text = e.text.as_deref().unwrap_or("");
        let have = words(text);
        let href = e.href.as_deref().map(words).unwrap_or_default();
        let mut score = 0.0;
        for w in &want {
            if have.contains(w) {
                score += 1.0;
            } else if href.contains(w) {
                score += 0.4;
            }
        }
        score /= want.len() as f64;
        if text.trim().eq_ignore_ascii_case(target.trim()) {
            score += 1.0;
        }
        if score > 0.0 && best.is_none_or(|(_, b)| score > b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// A select offering `value` (by option text, case-insensitive), and the option.
fn find_select(obs: &Observation, value: &str) -> Option<(usize, String)> {
    let want = value.trim().to_lowercase();
    obs.elements.iter().enumerate().find_map(|(i, e)| {
        let options = e.options.as_ref()?;
        options
            .iter()
            .find(|o| o.trim().to_lowercase() == want)
            .or_else(|| options.iter().find(|o| o.to_lowercase().contains(&want)))
            .map(|o| (i, o.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents() {
        assert_eq!(
            parse_intent("Search for 'rust' on the demo catalogue"),
            Intent::Search {
                terms: "rust".into(),
                then: None
            }
        );
        assert_eq!(
            parse_intent("search the catalogue for \"tea kettle\" and open the first result"),
            Intent::Search {
                terms: "tea kettle".into(),
                then: Some("first result".into())
            }
        );
        assert_eq!(
            parse_intent("Find rust books on the site"),
            Intent::Search {
                terms: "rust books".into(),
                then: None
            }
        );
        assert_eq!(
            parse_intent("Open the Gardening link"),
            Intent::Open {
                target: "Gardening link".into()
            }
        );
        assert_eq!(
            parse_intent("Select 'green' in the colour form"),
            Intent::Select {
                value: "green".into()
            }
        );
        assert_eq!(
            parse_intent("Search the catalogue for rust"),
            Intent::Search {
                terms: "rust".into(),
                then: None
            }
        );
        assert_eq!(
            parse_intent("Open the Stainless Tea Kettle page"),
            Intent::Open {
                target: "Stainless Tea Kettle page".into()
            }
        );
        assert_eq!(
            parse_intent("Search for books for children"),
            Intent::Search {
                terms: "books for children".into(),
                then: None
            }
        );
        assert_eq!(parse_intent("Summarise the page"), Intent::Read);
        assert_eq!(parse_intent("Open the page and read it"), Intent::Read);
    }

    fn input(name: &str, t: &str, placeholder: Option<&str>) -> Element {
        Element {
            kind: "input".into(),
            name: Some(name.into()),
            input_type: Some(t.into()),
            placeholder: placeholder.map(Into::into),
            ..Default::default()
        }
    }

    fn link(text: &str, href: &str) -> Element {
        Element {
            kind: "link".into(),
            text: Some(text.into()),
            href: Some(href.into()),
            ..Default::default()
        }
    }

    #[test]
    fn finds_the_search_box_not_the_newsletter() {
        let obs = Observation {
            elements: vec![
                link("Home", "/"),
                input("email", "email", Some("Your email")),
                input("name", "text", Some("Your name")),
                input("term", "text", Some("Search products")),
            ],
            ..Default::default()
        };
        assert_eq!(find_search_box(&obs), Some(3));
        let none = Observation {
            elements: vec![input("a", "text", None), input("b", "text", None)],
            ..Default::default()
        };
        assert_eq!(find_search_box(&none), None);
    }

    #[test]
    fn best_link_by_words() {
        let obs = Observation {
            elements: vec![
                link("Home", "/"),
                link("Garden tools", "/c/garden"),
                link("Gardening books", "/c/books?topic=gardening"),
            ],
            ..Default::default()
        };
        assert_eq!(best_link(&obs, "Gardening books"), Some(2));
        assert_eq!(best_link(&obs, "garden"), Some(1));
        assert_eq!(best_link(&obs, "astronomy"), None);
    }
}
