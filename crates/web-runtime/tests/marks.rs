//! Set-of-marks screenshots (`WEB_SCREENSHOTS=model` with
//! `WEB_SCREENSHOT_MARKS=true`) on a real Chromium and the demo order form:
//! the screenshot the scripted model receives has a frame in a mark colour
//! at the box the observation gives for an element id, and the stored PNG
//! is the image sent.

mod common;

use base64::Engine as _;
use common::{llm_client, run, start_local};
use serde_json::json;
use test_support::fake_llm::{FakeLlm, Reply};
use web_runtime::marks::PALETTE;

/// `(x, y, w, h)` of the observation line of element `needle`
/// (`[e12] button "Send order" @(x,y wxh)`).
fn box_of(observation: &str, needle: &str) -> Option<(f64, f64, f64, f64)> {
    let line = observation
        .lines()
        .find(|l| l.contains(needle) && l.contains("@("))?;
    let b = &line[line.find("@(")? + 2..];
    let b = &b[..b.find(')')?];
    let (xy, wh) = b.split_once(' ')?;
    let (x, y) = xy.split_once(',')?;
    let (w, h) = wh.split_once('x')?;
    Some((
        x.parse().ok()?,
        y.parse().ok()?,
        w.parse().ok()?,
        h.parse().ok()?,
    ))
}

fn decode(png: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut d = png::Decoder::new(std::io::Cursor::new(png));
    d.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = d.read_info().expect("png header");
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).expect("png frame");
    let bpp = info.line_size / info.width as usize;
    let (w, h) = (info.width as usize, info.height as usize);
    // As RGB.
    let rgb = buf[..info.buffer_size()]
        .chunks(bpp)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    (w, h, rgb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_frame_the_elements_the_model_can_name() {
    let (h, site) = start_local(2).await;
    let llm = FakeLlm::start(vec![Reply::tool_call("finish", json!({"answer": "seen"}))]).await;
    let mut settings = h.settings();
    settings.screenshots_to_model = true;
    settings.screenshot_marks = true;
    let handler = h.handler(settings, Some(llm_client(&llm, |_| {})));
    let t = run(
        &handler,
        json!({
            "task_id": "marks",
            "description": "Look at the order form",
            "max_steps": 2,
            "constraints": {"start_url": format!("{site}/order.html")}
        }),
    )
    .await;
    assert!(t.success, "{t:#?}");
    let drawn = t.steps[0].action_params["screenshot_marks"]
        .as_u64()
        .expect("marks counted");
    assert!(drawn >= 4, "the form's fields and button: {drawn}");

    let req = &llm.requests()[0];
    let messages = req.messages();
    let user = messages.last().expect("a message");
    let parts = user["content"].as_array().expect("text and image parts");
    // The page view is an earlier message (the tool result or user turn).
    let page: String = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let url = parts[1]["image_url"]["url"].as_str().expect("image");
    let png = base64::engine::general_purpose::STANDARD
        .decode(
            url.strip_prefix("data:image/png;base64,")
                .expect("PNG data URL"),
        )
        .expect("base64");
    let stored = std::fs::read(h.out.path().join("trajectories/marks.files/step_0.png"))
        .expect("stored PNG");
    assert_eq!(png, stored, "the stored screenshot is the one sent");

    let (x, y, w, hgt) = box_of(&page, "button \"Send order\"")
        .unwrap_or_else(|| panic!("button box in the view:\n{page}"));
    let (iw, ih, rgb) = decode(&png);
    assert!(iw > 100 && ih > 100, "{iw}x{ih}");
    let at = |px: f64, py: f64| {
        let (px, py) = (px.round() as usize, py.round() as usize);
        let i = (py.min(ih - 1) * iw + px.min(iw - 1)) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    };
    // The frame runs along the box's edges (the first page view is at the
    // top of the page, device scale 1): its middle of the left and bottom
    // edges are a mark colour.
    let left = at(x, y + hgt / 2.0);
    let bottom = at(x + w / 2.0, y + hgt - 1.0);
    assert!(PALETTE.contains(&left), "left edge {left:?} at {x},{y}");
    assert!(PALETTE.contains(&bottom), "bottom edge {bottom:?}");
    // The page's own pixels inside the button are no mark colour.
    let inside = at(x + w / 2.0, y + hgt / 2.0);
    assert!(!PALETTE.contains(&inside), "inside {inside:?}");
    h.stop().await;
}
