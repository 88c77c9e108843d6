//! The accessibility-tree view of a page (`WEB_OBSERVATION=axtree|both`):
//! Chromium's own accessibility tree (`Accessibility.getFullAXTree`, one per
//! frame, iframes grafted under their `<iframe>` node; open and closed shadow
//! roots are part of it), element boxes from one `DOMSnapshot.captureSnapshot`,
//! pruned to what an agent can use and rendered one node a line.
//!
//! **Element ids** are `e<backendDOMNodeId>`: Chromium's backend node id, which
//! stays the same for a DOM node as long as it lives in the page, so the same
//! element keeps its id from step to step (a new document has new nodes and
//! new ids). Actions accept them (`"element": "e412"`, [`crate::exec`]
//! resolves them with `DOM.resolveNode` in an isolated world of the node's
//! frame).
//!
//! Every node has its box in page coordinates (CSS pixels of the main
//! document) and where it is relative to the viewport: in view, above or
//! below. When the tree is longer than the cap, the nodes in view are kept
//! first, then those nearest below, so scrolling brings new nodes into the
//! view. Every string is cut in Rust; the page cannot make the view bigger.
//!
//! CDP answers are read as JSON (not chromiumoxide's typed structs, whose
//! protocol revision is older than Chromium's: one unknown enum value there
//! would fail the whole answer).

use std::collections::HashMap;
use std::fmt::Write as _;

use chromiumoxide::error::CdpError;
use chromiumoxide::types::MethodId;
use chromiumoxide::Page;
use chromiumoxide::{Command, Method};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::observe::cut;

/// A CDP command sent as JSON, answered as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Raw {
    #[serde(skip)]
    method: &'static str,
    #[serde(flatten)]
    params: serde_json::Map<String, Value>,
}

impl Raw {
    pub fn new(method: &'static str, params: Value) -> Self {
        let params = match params {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        Raw { method, params }
    }
}

impl Method for Raw {
    fn identifier(&self) -> MethodId {
        self.method.into()
    }
}

impl Command for Raw {
    type Response = Value;
}

/// Sends a raw command to the page's target.
pub async fn raw(page: &Page, method: &'static str, params: Value) -> Result<Value, CdpError> {
    Ok(page.execute(Raw::new(method, params)).await?.result)
}

/// Longest accessible name kept, in characters.
pub const MAX_NAME: usize = 100;
/// Longest value kept, in characters.
pub const MAX_VALUE: usize = 100;
/// Longest link URL kept, in characters.
pub const MAX_NODE_URL: usize = 200;
/// Longest role kept, in characters.
const MAX_ROLE: usize = 30;
/// Frames read at most (the main one included).
pub const MAX_FRAMES: usize = 16;
/// Accessibility nodes looked at per frame at most (a page of a million
/// nodes is read, but not walked whole).
const MAX_NODES_PER_FRAME: usize = 20_000;

/// Where a node is relative to the viewport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// At least partly in the viewport.
    In,
    Above,
    Below,
    /// Beside the viewport (left or right), or no box (not rendered).
    Off,
}

/// A box in page coordinates (CSS pixels of the main document).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// The viewport: size and scroll position (CSS pixels).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Viewport {
    pub width: f64,
    pub height: f64,
    pub scroll_x: f64,
    pub scroll_y: f64,
    /// Height of the whole main document.
    pub page_height: f64,
}

impl Viewport {
    fn place(&self, r: Option<Rect>) -> Place {
        let Some(r) = r else { return Place::Off };
        if r.y + r.h <= self.scroll_y {
            Place::Above
        } else if r.y >= self.scroll_y + self.height {
            Place::Below
        } else if r.x + r.w <= self.scroll_x || r.x >= self.scroll_x + self.width {
            Place::Off
        } else {
            Place::In
        }
    }
}

/// One node of the pruned tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AxNode {
    /// `e<backendDOMNodeId>` for elements an action can address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub role: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Link target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// States: `checked`, `disabled`, `expanded`, `focused`, `selected`, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rect: Option<Rect>,
    pub place: Place,
    /// Depth in the pruned tree.
    pub depth: usize,
}

/// The pruned accessibility tree of a page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AxView {
    pub viewport: Viewport,
    /// Every node kept after pruning, in tree order (before the cap).
    pub nodes: Vec<AxNode>,
    /// Frames read (the main one included) and frames that could not be
    /// read (out-of-process iframes, frames over [`MAX_FRAMES`]).
    pub frames: usize,
    pub frames_unread: usize,
    /// Nodes rendered at most (`WEB_MAX_AX_NODES`).
    #[serde(skip)]
    pub max_nodes: usize,
}

/// What a read gives besides the view: the frame of each addressable node
/// (actions resolve a node in its frame) and the raw trees for the record.
#[derive(Debug, Default)]
pub struct AxRead {
    pub view: AxView,
    pub node_frames: HashMap<u64, String>,
    /// `{"viewport", "frames": [{"frame_id", "owner", "nodes": [raw AX nodes]}], "boxes": {id: [x,y,w,h]}}`.
    pub raw: Value,
}

/// Roles whose nodes get an id although they are not focusable.
const ADDRESSABLE_ROLES: &[&str] = &[
    "link",
    "button",
    "textbox",
    "searchbox",
    "combobox",
    "checkbox",
    "radio",
    "switch",
    "slider",
    "spinbutton",
    "menuitem",
    "menuitemcheckbox",
    "menuitemradio",
    "tab",
    "option",
    "listbox",
    "treeitem",
    "gridcell",
    "columnheader",
    "rowheader",
    "image",
    "img",
    "heading",
    "cell",
    "row",
    "Iframe",
];

/// Roles dropped with their subtree.
const DROPPED_ROLES: &[&str] = &["InlineTextBox", "LineBreak", "ListMarker"];

/// Roles shown only when they have a name (else their children take their place).
const TRANSPARENT_ROLES: &[&str] = &[
    "generic",
    "none",
    "presentation",
    "paragraph",
    "group",
    "Section",
    "div",
    "LayoutTableCell",
    "LayoutTableRow",
    "LayoutTable",
    "strong",
    "emphasis",
    "ignored",
];

/// Properties shown as states (boolean ones when true; others as `k=v`).
const STATE_PROPERTIES: &[&str] = &[
    "checked",
    "disabled",
    "expanded",
    "focused",
    "selected",
    "pressed",
    "required",
    "readonly",
    "invalid",
    "modal",
    "multiselectable",
    "level",
];

fn ax_str(v: &Value, key: &str) -> Option<String> {
    match v.get(key)?.get("value")? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn clean(s: &str, max: usize) -> String {
    // Cut before collapsing whitespace: the string may be megabytes long.
    let mut s: String = s.chars().take(max * 2 + 16).collect();
    s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    cut(&mut s, max);
    s
}

/// Reads the page's accessibility tree and boxes. `viewport` comes from the
/// page (the observation script); the page height is filled in here.
pub async fn read(
    page: &Page,
    main_frame: &str,
    mut viewport: Viewport,
) -> Result<AxRead, CdpError> {
    let frame_tree = raw(page, "Page.getFrameTree", json!({}));
    let snapshot = raw(
        page,
        "DOMSnapshot.captureSnapshot",
        json!({"computedStyles": [], "includeDOMRects": false}),
    );
    let (frame_tree, snapshot) = futures::try_join!(frame_tree, snapshot)?;
    let mut frames = Vec::new();
    collect_frames(
        frame_tree.get("frameTree").unwrap_or(&Value::Null),
        &mut frames,
    );
    if frames.is_empty() {
        frames.push(main_frame.to_owned());
    }
    let unread_over_cap = frames.len().saturating_sub(MAX_FRAMES);
    frames.truncate(MAX_FRAMES);
    let fetches = frames.iter().enumerate().map(|(i, f)| async move {
        let tree = raw(page, "Accessibility.getFullAXTree", json!({"frameId": f})).await;
        let owner = if i == 0 {
            None
        } else {
            raw(page, "DOM.getFrameOwner", json!({"frameId": f}))
                .await
                .ok()
                .and_then(|v| v.get("backendNodeId").and_then(Value::as_u64))
        };
        (f.clone(), owner, tree)
    });
    let results = futures::future::join_all(fetches).await;

    let boxes = boxes(&snapshot);
    if let Some(h) = snapshot
        .pointer("/documents/0/contentHeight")
        .and_then(Value::as_f64)
    {
        viewport.page_height = h;
    }
    let mut trees: Vec<(String, Option<u64>, Vec<Value>)> = Vec::new();
    let mut unread = unread_over_cap;
    for (i, (frame, owner, tree)) in results.into_iter().enumerate() {
        match tree {
            Ok(mut v) => {
                let nodes = match v.get_mut("nodes").map(Value::take) {
                    Some(Value::Array(n)) => n,
                    _ => Vec::new(),
                };
                trees.push((frame, owner, nodes));
            }
            // The main frame must be readable; a child frame may be out of
            // process (another site) or gone meanwhile.
            Err(e) if i == 0 => return Err(e),
            Err(e) => {
                tracing::debug!(frame = %frame, error = %e, "Frame's accessibility tree not read.");
                unread += 1;
            }
        }
    }
    let (view, node_frames) = prune(&trees, &boxes, viewport, unread);
    let raw_frames: Vec<Value> = trees
        .into_iter()
        .map(|(frame, owner, nodes)| json!({"frame_id": frame, "owner": owner, "nodes": nodes}))
        .collect();
    let raw_boxes: serde_json::Map<String, Value> = boxes
        .iter()
        .map(|(id, r)| (id.to_string(), json!([r.x, r.y, r.w, r.h])))
        .collect();
    Ok(AxRead {
        view,
        node_frames,
        raw: json!({"viewport": viewport, "frames": raw_frames, "boxes": raw_boxes}),
    })
}

fn collect_frames(tree: &Value, out: &mut Vec<String>) {
    if out.len() > MAX_FRAMES * 4 {
        return;
    }
    if let Some(id) = tree.pointer("/frame/id").and_then(Value::as_str) {
        out.push(id.to_owned());
    }
    if let Some(children) = tree.get("childFrames").and_then(Value::as_array) {
        for c in children {
            collect_frames(c, out);
        }
    }
}

/// Boxes by backend node id, in page coordinates of the main document: a
/// node of an iframe's document is offset by its `<iframe>`'s box (and
/// that document's scroll).
fn boxes(snapshot: &Value) -> HashMap<u64, Rect> {
    let empty = Vec::new();
    let docs = snapshot
        .get("documents")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    // Per document: backend id → box in the document's own coordinates;
    // and which node of which document hosts each content document.
    let mut local: Vec<HashMap<u64, Rect>> = Vec::with_capacity(docs.len());
    let mut host: HashMap<usize, (usize, u64)> = HashMap::new();
    for (d, doc) in docs.iter().enumerate() {
        let backend: Vec<u64> = doc
            .pointer("/nodes/backendNodeId")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
            .unwrap_or_default();
        if let Some(cd) = doc.pointer("/nodes/contentDocumentIndex") {
            let idx = cd.get("index").and_then(Value::as_array);
            let val = cd.get("value").and_then(Value::as_array);
            if let (Some(idx), Some(val)) = (idx, val) {
                for (n, c) in idx.iter().zip(val) {
                    if let (Some(n), Some(c)) = (n.as_u64(), c.as_u64()) {
                        if let Some(b) = backend.get(n as usize) {
                            host.insert(c as usize, (d, *b));
                        }
                    }
                }
            }
        }
        let mut m = HashMap::new();
        let nodes = doc.pointer("/layout/nodeIndex").and_then(Value::as_array);
        let bounds = doc.pointer("/layout/bounds").and_then(Value::as_array);
        if let (Some(nodes), Some(bounds)) = (nodes, bounds) {
            for (n, b) in nodes.iter().zip(bounds) {
                let (Some(n), Some(b)) = (n.as_u64(), b.as_array()) else {
                    continue;
                };
                let f = |i: usize| b.get(i).and_then(Value::as_f64).unwrap_or(0.0);
                if let Some(id) = backend.get(n as usize) {
                    // A node may have several layout objects: keep the first.
                    m.entry(*id).or_insert(Rect {
                        x: f(0),
                        y: f(1),
                        w: f(2),
                        h: f(3),
                    });
                }
            }
        }
        local.push(m);
    }
    // Offset of each document in main-document coordinates.
    let offset = |mut d: usize| -> (f64, f64) {
        let (mut x, mut y) = (0.0, 0.0);
        for _ in 0..MAX_FRAMES {
            let Some((parent, node)) = host.get(&d) else {
                break;
            };
            if let Some(r) = local.get(*parent).and_then(|m| m.get(node)) {
                x += r.x;
                y += r.y;
            }
            let doc = &docs[d];
            x -= doc
                .get("scrollOffsetX")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            y -= doc
                .get("scrollOffsetY")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            d = *parent;
        }
        (x, y)
    };
    let mut out = HashMap::new();
    for (d, m) in local.iter().enumerate() {
        let (dx, dy) = if d == 0 { (0.0, 0.0) } else { offset(d) };
        for (id, r) in m {
            out.insert(
                *id,
                Rect {
                    x: r.x + dx,
                    y: r.y + dy,
                    ..*r
                },
            );
        }
    }
    out
}

/// Prunes the frames' trees into one list of nodes in tree order.
fn prune(
    trees: &[(String, Option<u64>, Vec<Value>)],
    boxes: &HashMap<u64, Rect>,
    viewport: Viewport,
    unread: usize,
) -> (AxView, HashMap<u64, String>) {
    struct Frame<'a> {
        id: &'a str,
        by_id: HashMap<&'a str, &'a Value>,
        root: Option<&'a Value>,
    }
    let frames: Vec<Frame<'_>> = trees
        .iter()
        .map(|(id, _, nodes)| {
            let nodes = &nodes[..nodes.len().min(MAX_NODES_PER_FRAME)];
            let by_id: HashMap<&str, &Value> = nodes
                .iter()
                .filter_map(|n| Some((n.get("nodeId")?.as_str()?, n)))
                .collect();
            // The root: the node without a parent (the document).
            let root = nodes
                .iter()
                .find(|n| n.get("parentId").is_none())
                .or(nodes.first());
            Frame {
                id: id.as_str(),
                by_id,
                root,
            }
        })
        .collect();
    // <iframe> backend id → index of the frame it hosts.
    let hosted: HashMap<u64, usize> = trees
        .iter()
        .enumerate()
        .filter_map(|(i, (_, owner, _))| Some(((*owner)?, i)))
        .collect();

    let mut out = Vec::new();
    let mut node_frames = HashMap::new();
    let mut visited_frames = vec![false; frames.len()];
    // Explicit stack (a page may nest deeply): (frame, node, depth, parent name).
    let mut stack: Vec<(usize, &Value, usize, String)> = Vec::new();
    if let Some(root) = frames.first().and_then(|f| f.root) {
        visited_frames[0] = true;
        stack.push((0, root, 0, String::new()));
    }
    while let Some((f, node, depth, parent_name)) = stack.pop() {
        if out.len() >= MAX_NODES_PER_FRAME {
            break;
        }
        let frame = &frames[f];
        let role = ax_str(node, "role").unwrap_or_default();
        if DROPPED_ROLES.contains(&role.as_str()) {
            continue;
        }
        let ignored = node.get("ignored").and_then(Value::as_bool) == Some(true);
        let name = clean(&ax_str(node, "name").unwrap_or_default(), MAX_NAME);
        let backend = node.get("backendDOMNodeId").and_then(Value::as_u64);
        let props = props(node);
        let transparent = TRANSPARENT_ROLES.contains(&role.as_str()) && name.is_empty();
        let repeated = role == "StaticText" && (name.is_empty() || name == parent_name);
        let shown = !(ignored || transparent || repeated || role.is_empty());
        let mut child_depth = depth;
        let mut my_name = parent_name.clone();
        if shown {
            let focusable = props.iter().any(|(k, v)| k == "focusable" && v == "true");
            let id = backend.filter(|_| {
                role != "StaticText"
                    && role != "RootWebArea"
                    && (focusable || ADDRESSABLE_ROLES.contains(&role.as_str()))
            });
            if let Some(id) = id {
                node_frames.insert(id, frame.id.to_owned());
            }
            let rect = backend.and_then(|b| boxes.get(&b).copied());
            let mut states = Vec::new();
            let mut url = None;
            for (k, v) in &props {
                if k == "url" {
                    url = Some(clean(v, MAX_NODE_URL));
                } else if STATE_PROPERTIES.contains(&k.as_str()) {
                    match v.as_str() {
                        "true" => states.push(k.clone()),
                        "false" | "" => {
                            if k == "expanded" || (k == "checked" && role != "StaticText") {
                                states.push(format!("{k}=false"));
                            }
                        }
                        other => states.push(format!("{k}={}", clean(other, 20))),
                    }
                }
            }
            let value = ax_str(node, "value")
                .map(|v| clean(&v, MAX_VALUE))
                .filter(|v| !v.is_empty() && *v != name);
            let mut role = role.clone();
            cut(&mut role, MAX_ROLE);
            out.push(AxNode {
                id,
                role,
                place: viewport.place(rect),
                rect,
                name: name.clone(),
                value,
                url,
                states,
                depth,
            });
            child_depth = depth + 1;
            my_name = name;
        }
        // Children: this frame's, then (an <iframe>) the hosted frame's root.
        let mut children: Vec<(usize, &Value, usize, String)> = Vec::new();
        if let Some(ids) = node.get("childIds").and_then(Value::as_array) {
            for c in ids {
                if let Some(c) = c.as_str().and_then(|c| frame.by_id.get(c)) {
                    children.push((f, c, child_depth, my_name.clone()));
                }
            }
        }
        if let Some(&sub) = backend.and_then(|b| hosted.get(&b)) {
            if !visited_frames[sub] {
                visited_frames[sub] = true;
                if let Some(root) = frames[sub].root {
                    children.push((sub, root, child_depth, String::new()));
                }
            }
        }
        stack.extend(children.into_iter().rev());
    }
    let read = frames.len();
    (
        AxView {
            viewport,
            nodes: out,
            frames: read,
            frames_unread: unread,
            max_nodes: usize::MAX,
        },
        node_frames,
    )
}

/// A node's properties as (name, value) strings.
fn props(node: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(ps) = node.get("properties").and_then(Value::as_array) {
        for p in ps.iter().take(40) {
            let Some(name) = p.get("name").and_then(Value::as_str) else {
                continue;
            };
            let v = match p.pointer("/value/value") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            out.push((name.to_owned(), v));
        }
    }
    out
}

impl AxNode {
    /// One line: `[e12] link "Books" url=/list.html @(10,40 60x18)`, plus
    /// `(below)`/`(above)`/`(off)` when not in the viewport.
    pub fn render(&self, base: &str) -> String {
        let mut s = "  ".repeat(self.depth.min(20));
        if let Some(id) = self.id {
            let _ = write!(s, "[e{id}] ");
        }
        s.push_str(&self.role);
        if !self.name.is_empty() {
            let _ = write!(s, " {:?}", self.name);
        }
        if let Some(v) = &self.value {
            let _ = write!(s, " value={v:?}");
        }
        for st in &self.states {
            let _ = write!(s, " {st}");
        }
        if let Some(u) = &self.url {
            let _ = write!(s, " url={}", crate::observe::shorten_href(u, base));
        }
        if self.id.is_some() {
            if let Some(r) = self.rect {
                let _ = write!(
                    s,
                    " @({},{} {}x{})",
                    r.x.round() as i64,
                    r.y.round() as i64,
                    r.w.round() as i64,
                    r.h.round() as i64
                );
            }
        }
        match self.place {
            Place::In => {}
            Place::Above => s.push_str(" (above)"),
            Place::Below => s.push_str(" (below)"),
            // No box at all (a closed select's options...): nothing to say.
            Place::Off if self.rect.is_none() => {}
            Place::Off => s.push_str(" (off-screen)"),
        }
        s
    }
}

impl AxView {
    /// Places every node again for `viewport` (read after the tree).
    pub fn set_viewport(&mut self, viewport: Viewport) {
        self.viewport = viewport;
        for n in &mut self.nodes {
            n.place = viewport.place(n.rect);
        }
    }

    /// The section as it goes into an observation, at most `max_nodes`
    /// nodes and `max_bytes` bytes: the nodes in view first, then the
    /// nearest below, then the nearest above (tree order kept); what was
    /// left out is counted.
    pub fn render(&self, base: &str, max_nodes: usize, max_bytes: usize) -> String {
        let v = &self.viewport;
        let mut s = format!(
            "Accessibility tree (ids [eN] are stable while the page stays; viewport y={}..{} of {} px; (below)/(above): outside the viewport, scroll to see):\n",
            v.scroll_y.round() as i64,
            (v.scroll_y + v.height).round() as i64,
            v.page_height.round() as i64
        );
        let lines: Vec<String> = self.nodes.iter().map(|n| n.render(base)).collect();
        // Order of preference: in view (and off-screen, e.g. no box), then
        // below by distance, then above by distance.
        let mut order: Vec<usize> = (0..self.nodes.len()).collect();
        let key = |i: &usize| -> (u8, i64) {
            let n = &self.nodes[*i];
            let y = n.rect.map_or(0.0, |r| r.y);
            match n.place {
                Place::In | Place::Off => (0, *i as i64),
                Place::Below => (1, (y - (v.scroll_y + v.height)) as i64),
                Place::Above => (2, (v.scroll_y - y) as i64),
            }
        };
        order.sort_by_key(key);
        let mut keep = vec![false; lines.len()];
        let mut used = s.len() + 120;
        for (kept, i) in order.into_iter().enumerate() {
            if kept >= max_nodes || used + lines[i].len() + 1 > max_bytes {
                break;
            }
            keep[i] = true;
            used += lines[i].len() + 1;
        }
        let (mut above, mut below) = (0usize, 0usize);
        for (i, line) in lines.iter().enumerate() {
            if keep[i] {
                s.push_str(line);
                s.push('\n');
            } else if self.nodes[i].place == Place::Above {
                above += 1;
            } else {
                below += 1;
            }
        }
        if above + below > 0 {
            let _ = writeln!(
                s,
                "[… {above} nodes above and {below} below the viewport not listed: scroll to see them]"
            );
        }
        if self.frames_unread > 0 {
            let _ = writeln!(
                s,
                "[{} frame(s) could not be read (e.g. another site's iframe)]",
                self.frames_unread
            );
        }
        s
    }
}

/// Longest string kept in the stored raw tree, in characters (a page's
/// 30 MB title would otherwise crowd out every node).
pub const MAX_RAW_STRING: usize = 4096;

fn has_long_string(v: &Value) -> bool {
    match v {
        Value::String(s) => s.len() > MAX_RAW_STRING,
        Value::Array(a) => a.iter().any(has_long_string),
        Value::Object(m) => m.values().any(has_long_string),
        _ => false,
    }
}

/// Cuts every string in `v` to [`MAX_RAW_STRING`] characters; returns
/// whether one was cut.
fn cut_strings(v: &mut Value) -> bool {
    match v {
        Value::String(s) if s.len() > MAX_RAW_STRING => {
            let before = s.len();
            cut(s, MAX_RAW_STRING);
            s.len() < before
        }
        Value::Array(a) => a.iter_mut().fold(false, |c, x| cut_strings(x) | c),
        Value::Object(m) => m.values_mut().fold(false, |c, x| cut_strings(x) | c),
        _ => false,
    }
}

/// The raw trees as stored per step: compact JSON cut to `max_bytes` (every
/// string cut to [`MAX_RAW_STRING`] characters, then the node lists
/// shortened frame by frame; `"cut": true` says either happened).
pub fn raw_record(raw: &Value, max_bytes: usize) -> (Vec<u8>, bool) {
    let mut owned;
    let mut raw = raw;
    let mut strings_cut = false;
    if has_long_string(raw) {
        owned = raw.clone();
        strings_cut = cut_strings(&mut owned);
        if strings_cut {
            owned["cut"] = json!(true);
        }
        raw = &owned;
    }
    let bytes = serde_json::to_vec(raw).unwrap_or_default();
    if bytes.len() <= max_bytes {
        return (bytes, strings_cut);
    }
    let mut v = raw.clone();
    let total = bytes.len();
    // Keep the same share of every frame's nodes, then shrink until it fits.
    let mut share = max_bytes as f64 / total as f64;
    for _ in 0..8 {
        if let Some(frames) = v.get_mut("frames").and_then(Value::as_array_mut) {
            for (f, orig) in frames
                .iter_mut()
                .zip(raw["frames"].as_array().cloned().unwrap_or_default())
            {
                let n = orig["nodes"].as_array().map_or(0, Vec::len);
                let keep = ((n as f64) * share) as usize;
                if let Some(nodes) = orig["nodes"].as_array() {
                    f["nodes"] = Value::Array(nodes[..keep.min(n)].to_vec());
                }
            }
        }
        v["boxes"] = json!({});
        v["cut"] = json!(true);
        v["bytes_before_cut"] = json!(total);
        let b = serde_json::to_vec(&v).unwrap_or_default();
        if b.len() <= max_bytes {
            return (b, true);
        }
        share *= 0.7;
    }
    let b = serde_json::to_vec(&json!({"cut": true, "bytes_before_cut": total}));
    (b.unwrap_or_default(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, role: &str, name: &str, backend: u64, children: &[&str]) -> Value {
        json!({"nodeId": id, "ignored": false, "role": {"type": "role", "value": role},
               "name": {"type": "computedString", "value": name},
               "backendDOMNodeId": backend, "childIds": children})
    }

    #[test]
    fn prunes_grafts_frames_and_keeps_the_viewport_first() {
        let mut main = vec![
            node("1", "RootWebArea", "Doc", 1, &["2", "3", "4"]),
            node("2", "generic", "", 2, &["5"]),
            node("3", "Iframe", "", 3, &[]),
            node("4", "link", &"x".repeat(5000), 4, &["6"]),
            node("5", "button", "Go", 5, &["7"]),
            node("6", "StaticText", "irrelevant", 6, &[]),
            node("7", "StaticText", "Go", 7, &[]),
        ];
        main[0].as_object_mut().expect("obj").remove("parentId");
        for n in &mut main[1..] {
            n["parentId"] = json!("1");
        }
        let sub = vec![
            node("1", "RootWebArea", "Inner", 100, &["2"]),
            node("2", "textbox", "Name", 101, &[]),
        ];
        let mut sub = sub;
        sub[1]["parentId"] = json!("1");
        sub[1]["properties"] = json!([{"name": "focusable", "value": {"type": "booleanOrUndefined", "value": true}},
                                      {"name": "required", "value": {"type": "boolean", "value": true}}]);
        let trees = vec![
            ("main".to_owned(), None, main),
            ("sub".to_owned(), Some(3), sub),
        ];
        let mut boxes = HashMap::new();
        boxes.insert(
            5,
            Rect {
                x: 1.0,
                y: 10.0,
                w: 20.0,
                h: 10.0,
            },
        );
        boxes.insert(
            4,
            Rect {
                x: 1.0,
                y: 5000.0,
                w: 20.0,
                h: 10.0,
            },
        );
        boxes.insert(
            101,
            Rect {
                x: 1.0,
                y: 100.0,
                w: 20.0,
                h: 10.0,
            },
        );
        let vp = Viewport {
            width: 800.0,
            height: 600.0,
            scroll_x: 0.0,
            scroll_y: 0.0,
            page_height: 6000.0,
        };
        let (view, frames) = prune(&trees, &boxes, vp, 0);
        let roles: Vec<&str> = view.nodes.iter().map(|n| n.role.as_str()).collect();
        assert_eq!(
            roles,
            [
                "RootWebArea",
                "button",
                "Iframe",
                "RootWebArea",
                "textbox",
                "link",
                "StaticText"
            ],
            "{view:#?}"
        );
        assert_eq!(frames.get(&101).map(String::as_str), Some("sub"));
        assert_eq!(frames.get(&5).map(String::as_str), Some("main"));
        let link = &view.nodes[5];
        assert_eq!(link.place, Place::Below);
        assert!(link.name.chars().count() <= MAX_NAME + 1);
        let r = view.render("http://x/", 1000, 100_000);
        assert!(r.contains("[e5] button \"Go\" @(1,10 20x10)\n"), "{r}");
        assert!(
            r.contains("[e101] textbox \"Name\" required @(1,100 20x10)\n"),
            "{r}"
        );
        assert!(r.contains("(below)"), "{r}");
        // Capped: the node in view stays, the one below goes first.
        let r = view.render("http://x/", 5, 100_000);
        assert!(r.contains("[e5] button"), "{r}");
        assert!(!r.contains("[e4] link"), "{r}");
        assert!(r.contains("below the viewport not listed"), "{r}");
    }

    #[test]
    fn the_whole_observation_stays_under_its_cap() {
        let long = "名".repeat(5000);
        let nodes: Vec<AxNode> = (0..20_000)
            .map(|i| AxNode {
                id: Some(i),
                role: "link".into(),
                name: clean(&long, MAX_NAME),
                value: Some(clean(&long, MAX_VALUE)),
                url: Some(clean(&long, MAX_NODE_URL)),
                states: vec!["focused".into()],
                rect: Some(Rect {
                    x: 0.0,
                    y: i as f64 * 10.0,
                    w: 10.0,
                    h: 10.0,
                }),
                place: if i < 60 { Place::In } else { Place::Below },
                depth: (i % 50) as usize,
            })
            .collect();
        let o = crate::observe::Observation {
            title: "t".into(),
            url: "http://x/".into(),
            text: "text ".repeat(800),
            axtree: Some(AxView {
                nodes,
                max_nodes: 400,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = o.render_capped(32_768);
        assert!(r.len() <= 32_768, "{}", r.len());
        assert!(r.contains("[e0] link"), "{r}");
        assert!(r.contains("below the viewport not listed"), "{r}");
    }

    #[test]
    fn a_huge_string_does_not_crowd_out_the_raw_tree() {
        let mut nodes = vec![node("1", "RootWebArea", &"x".repeat(30_000_000), 1, &[])];
        nodes.extend((2..200).map(|i| node(&i.to_string(), "link", "a link", i, &[])));
        let raw = json!({"viewport": {}, "frames": [{"frame_id": "m", "owner": null, "nodes": nodes}], "boxes": {}});
        let (b, cut) = raw_record(&raw, 1 << 20);
        assert!(cut);
        assert!(b.len() < 100_000, "{}", b.len());
        let v: Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["frames"][0]["nodes"].as_array().map(Vec::len), Some(199));
    }

    #[test]
    fn raw_record_is_capped() {
        let nodes: Vec<Value> = (0..10_000)
            .map(|i| node(&i.to_string(), "StaticText", "some text here", i, &[]))
            .collect();
        let raw = json!({"viewport": {}, "frames": [{"frame_id": "m", "owner": null, "nodes": nodes}], "boxes": {}});
        let (b, cut) = raw_record(&raw, 100_000);
        assert!(cut);
        assert!(b.len() <= 100_000, "{}", b.len());
        let v: Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["cut"], true);
        assert!(!v["frames"][0]["nodes"]
            .as_array()
            .expect("nodes")
            .is_empty());
    }
}
