//! Set-of-marks screenshots (`WEB_SCREENSHOT_MARKS=true` with
//! `WEB_SCREENSHOTS=model`): the screenshot the model is sent gets a
//! coloured frame around each element of the accessibility-tree view that
//! is in the viewport, labelled with the element's id (`e<backendDOMNodeId>`,
//! the id the model names in an action). Drawn on the PNG in Rust: the page
//! itself is not touched (no overlay element a page script could see or
//! move).

use crate::axtree::{AxView, Place, Rect, Viewport};

/// One element to mark: its id and its box in page coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub id: u64,
    pub rect: Rect,
}

/// The marks of `view`: every addressable node in the viewport, in tree
/// order, at most `max` (the nodes the observation renders first).
pub fn of_view(view: &AxView, max: usize) -> Vec<Mark> {
    view.nodes
        .iter()
        .filter(|n| n.place == Place::In)
        .filter_map(|n| {
            Some(Mark {
                id: n.id?,
                rect: n.rect?,
            })
        })
        .take(max)
        .collect()
}

/// Frame and label colours (RGB), one per mark in turn: saturated colours
/// that stay readable behind white digits.
pub const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [0, 130, 200],
    [60, 160, 60],
    [145, 30, 180],
    [245, 130, 48],
    [0, 128, 128],
    [170, 110, 40],
    [128, 0, 0],
];

/// Width of a frame line, in image pixels.
const LINE: usize = 2;
/// Each font pixel is drawn as a SCALE × SCALE square.
const SCALE: usize = 2;
const GLYPH_W: usize = 5;
const GLYPH_H: usize = 7;

/// A 5 × 7 bitmap (rows top down, bit 4 = left column) of the characters a
/// label uses: `e` and the digits.
fn glyph(c: char) -> Option<[u8; GLYPH_H]> {
    Some(match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        _ => return None,
    })
}

/// An image being drawn on: 8-bit RGB or RGBA pixels.
struct Canvas {
    width: usize,
    height: usize,
    /// Bytes per pixel (3 or 4).
    bpp: usize,
    data: Vec<u8>,
}

impl Canvas {
    fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, rgb: [u8; 3]) {
        let clamp = |v: i64, max: usize| v.clamp(0, max as i64) as usize;
        let (x0, x1) = (clamp(x0, self.width), clamp(x1, self.width));
        let (y0, y1) = (clamp(y0, self.height), clamp(y1, self.height));
        for y in y0..y1 {
            for x in x0..x1 {
                let at = (y * self.width + x) * self.bpp;
                self.data[at..at + 3].copy_from_slice(&rgb);
                if self.bpp == 4 {
                    self.data[at + 3] = 255;
                }
            }
        }
    }

    /// A frame of [`LINE`] pixels just inside `(x0, y0)–(x1, y1)`.
    fn frame(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, rgb: [u8; 3]) {
        let l = LINE as i64;
        self.fill(x0, y0, x1, y0 + l, rgb);
        self.fill(x0, y1 - l, x1, y1, rgb);
        self.fill(x0, y0, x0 + l, y1, rgb);
        self.fill(x1 - l, y0, x1, y1, rgb);
    }

    /// `text` in white on a `rgb` plate whose top-left corner is (x, y).
    fn label(&mut self, x: i64, y: i64, text: &str, rgb: [u8; 3]) {
        let (w, h) = label_size(text);
        self.fill(x, y, x + w, y + h, rgb);
        let mut cx = x + SCALE as i64;
        for c in text.chars() {
            if let Some(rows) = glyph(c) {
                for (r, bits) in rows.iter().enumerate() {
                    for col in 0..GLYPH_W {
                        if bits & (0x10 >> col) != 0 {
                            let px = cx + (col * SCALE) as i64;
                            let py = y + SCALE as i64 + (r * SCALE) as i64;
                            self.fill(px, py, px + SCALE as i64, py + SCALE as i64, [255; 3]);
                        }
                    }
                }
            }
            cx += ((GLYPH_W + 1) * SCALE) as i64;
        }
    }
}

/// Width and height of a label plate (one font pixel of margin around).
fn label_size(text: &str) -> (i64, i64) {
    let n = text.chars().count();
    (
        ((n * (GLYPH_W + 1) + 1) * SCALE) as i64,
        ((GLYPH_H + 2) * SCALE) as i64,
    )
}

/// Draws `marks` on the PNG `png`, a screenshot of the viewport `vp`
/// (page coordinates are moved by its scroll position and scaled to the
/// image: image width / viewport width). Returns the new PNG (same size and
/// colour type, fast compression). `Err` for an image this cannot draw on
/// (not 8-bit RGB or RGBA after expansion) or a PNG error.
pub fn draw(png: &[u8], vp: Viewport, marks: &[Mark]) -> Result<Vec<u8>, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let mut data = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut data).map_err(|e| e.to_string())?;
    data.truncate(info.buffer_size());
    let bpp = match (info.color_type, info.bit_depth) {
        (png::ColorType::Rgb, png::BitDepth::Eight) => 3,
        (png::ColorType::Rgba, png::BitDepth::Eight) => 4,
        (c, d) => return Err(format!("cannot draw on a {c:?} {d:?} PNG")),
    };
    let mut canvas = Canvas {
        width: info.width as usize,
        height: info.height as usize,
        bpp,
        data,
    };
    let scale = if vp.width > 0.0 {
        canvas.width as f64 / vp.width
    } else {
        1.0
    };
    let at = |v: f64, scroll: f64| ((v - scroll) * scale).round() as i64;
    // Frames first, then the labels on top of every frame.
    let placed: Vec<(i64, i64, i64, i64, [u8; 3])> = marks
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let r = m.rect;
            (
                at(r.x, vp.scroll_x),
                at(r.y, vp.scroll_y),
                at(r.x + r.w, vp.scroll_x),
                at(r.y + r.h, vp.scroll_y),
                PALETTE[i % PALETTE.len()],
            )
        })
        .collect();
    for &(x0, y0, x1, y1, rgb) in &placed {
        canvas.frame(
            x0,
            y0,
            x1.max(x0 + 2 * LINE as i64),
            y1.max(y0 + 2 * LINE as i64),
            rgb,
        );
    }
    for (m, &(x0, y0, _, _, rgb)) in marks.iter().zip(&placed) {
        let text = format!("e{}", m.id);
        let (_, h) = label_size(&text);
        // Above the frame when there is room, else inside its top-left corner.
        let y = if y0 >= h { y0 - h } else { y0.max(0) };
        canvas.label(x0.max(0), y, &text, rgb);
    }
    let mut out = Vec::with_capacity(png.len() + png.len() / 8);
    {
        let mut enc = png::Encoder::new(&mut out, info.width, info.height);
        enc.set_color(if bpp == 4 {
            png::ColorType::Rgba
        } else {
            png::ColorType::Rgb
        });
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&canvas.data)
            .map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::axtree::AxNode;

    fn blank_png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().expect("header");
        wr.write_image_data(&vec![255; (w * h * 4) as usize])
            .expect("data");
        wr.finish().expect("finish");
        out
    }

    fn pixels(png: &[u8]) -> (usize, Vec<u8>) {
        let mut r = png::Decoder::new(std::io::Cursor::new(png))
            .read_info()
            .expect("info");
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).expect("frame");
        (info.width as usize, buf)
    }

    fn node(id: Option<u64>, rect: Rect, place: Place) -> AxNode {
        AxNode {
            id,
            role: "button".into(),
            name: String::new(),
            value: None,
            url: None,
            states: vec![],
            rect: Some(rect),
            place,
            depth: 0,
        }
    }

    #[test]
    fn frames_and_labels_land_on_the_element_boxes() {
        let view = AxView {
            viewport: Viewport {
                width: 200.0,
                height: 100.0,
                scroll_x: 0.0,
                scroll_y: 50.0,
                page_height: 400.0,
            },
            nodes: vec![
                node(
                    Some(7),
                    Rect {
                        x: 20.0,
                        y: 110.0,
                        w: 60.0,
                        h: 20.0,
                    },
                    Place::In,
                ),
                node(
                    None,
                    Rect {
                        x: 0.0,
                        y: 50.0,
                        w: 10.0,
                        h: 10.0,
                    },
                    Place::In,
                ),
                node(
                    Some(9),
                    Rect {
                        x: 0.0,
                        y: 300.0,
                        w: 10.0,
                        h: 10.0,
                    },
                    Place::Below,
                ),
            ],
            ..Default::default()
        };
        let marks = of_view(&view, 10);
        assert_eq!(marks.len(), 1, "only addressable nodes in view");
        // A 2x image (device scale factor 2): boxes scale with it.
        let png = blank_png(400, 200);
        let drawn = draw(&png, view.viewport, &marks).expect("draw");
        let (w, px) = pixels(&drawn);
        let at = |x: usize, y: usize| &px[(y * w + x) * 4..(y * w + x) * 4 + 3];
        // The frame's top-left corner: (20, 110 - 50) * 2.
        assert_eq!(at(40, 120), &PALETTE[0]);
        assert_eq!(at(41, 121), &PALETTE[0]);
        // Inside the frame the page is untouched.
        assert_eq!(at(80, 140), &[255, 255, 255]);
        // The label plate sits just above the frame, with white digits.
        let (lw, lh) = label_size("e7");
        assert_eq!(at(40, 120 - lh as usize), &PALETTE[0]);
        let label: Vec<&[u8]> = (0..lw as usize)
            .flat_map(|dx| (0..lh as usize).map(move |dy| (40 + dx, 120 - lh as usize + dy)))
            .map(|(x, y)| at(x, y))
            .collect();
        assert!(label.iter().any(|p| *p == [255, 255, 255]), "digits drawn");
        assert!(label.iter().any(|p| *p == PALETTE[0]), "on the plate");
        // Nothing drawn far from the element.
        assert_eq!(at(300, 190), &[255, 255, 255]);
    }

    #[test]
    fn not_a_png_is_an_error() {
        assert!(draw(b"not a png", Viewport::default(), &[]).is_err());
    }
}
