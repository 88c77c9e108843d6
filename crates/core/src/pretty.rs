//! The layout of trajectory files: pretty-printed JSON (two-space indent,
//! as `serde_json::to_vec_pretty`), except that an array of numbers is
//! written on one line, without spaces (`[1000,8919,16838]`).
//!
//! Token ids and logprobs (`LLM_LOGPROBS=true`) are long arrays of numbers;
//! pretty-printed one number a line they made a 10-step trajectory with
//! 500-token replies 868 KiB. The values are unchanged (same numbers, same
//! key order); only whitespace differs, so any JSON reader reads the same
//! document, and a recorded request is rebuilt byte for byte as before
//! ([`crate::llm_record::request_body`] serializes the parsed values, never
//! the file's text).

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};

/// `value` as pretty-printed JSON with arrays of numbers on one line.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4096);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, NumberRows::default());
    value.serialize(&mut ser)?;
    Ok(out)
}

/// An open array or object.
#[derive(Debug)]
struct Frame {
    array: bool,
    has_value: bool,
    /// An array whose elements so far are all numbers (on one line).
    compact: bool,
}

/// The formatter of [`to_vec`].
#[derive(Debug, Default)]
struct NumberRows {
    frames: Vec<Frame>,
    /// An array element is about to start (`Some(first)`); its separator is
    /// written once its kind (number or not) is known.
    pending: Option<bool>,
}

const INDENT: &[u8] = b"  ";

impl NumberRows {
    fn newline<W: ?Sized + Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(b"\n")?;
        for _ in 0..self.frames.len() {
            w.write_all(INDENT)?;
        }
        Ok(())
    }

    /// Writes the separator before a value, if the value is an array element.
    fn open<W: ?Sized + Write>(&mut self, w: &mut W, number: bool) -> io::Result<()> {
        let Some(first) = self.pending.take() else {
            return Ok(());
        };
        let compact = match self.frames.last_mut() {
            Some(f) => {
                if first {
                    f.compact = number;
                } else if !number {
                    f.compact = false;
                }
                f.compact
            }
            None => false,
        };
        if !first {
            w.write_all(b",")?;
        }
        if compact {
            Ok(())
        } else {
            self.newline(w)
        }
    }

    fn close<W: ?Sized + Write>(&mut self, w: &mut W, end: &[u8]) -> io::Result<()> {
        let frame = self.frames.pop();
        if frame.is_some_and(|f| f.has_value && !(f.array && f.compact)) {
            self.newline(w)?;
        }
        w.write_all(end)
    }
}

macro_rules! number {
    ($($name:ident: $t:ty),* $(,)?) => {
        $(
            fn $name<W: ?Sized + Write>(&mut self, w: &mut W, value: $t) -> io::Result<()> {
                self.open(w, true)?;
                CompactFormatter.$name(w, value)
            }
        )*
    };
}

impl Formatter for NumberRows {
    number!(
        write_i8: i8, write_i16: i16, write_i32: i32, write_i64: i64, write_i128: i128,
        write_u8: u8, write_u16: u16, write_u32: u32, write_u64: u64, write_u128: u128,
        write_f32: f32, write_f64: f64,
    );

    fn write_number_str<W: ?Sized + Write>(&mut self, w: &mut W, value: &str) -> io::Result<()> {
        self.open(w, true)?;
        CompactFormatter.write_number_str(w, value)
    }

    fn write_null<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, false)?;
        w.write_all(b"null")
    }

    fn write_bool<W: ?Sized + Write>(&mut self, w: &mut W, value: bool) -> io::Result<()> {
        self.open(w, false)?;
        w.write_all(if value { b"true" } else { b"false" })
    }

    fn begin_string<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, false)?;
        w.write_all(b"\"")
    }

    fn write_byte_array<W: ?Sized + Write>(&mut self, w: &mut W, value: &[u8]) -> io::Result<()> {
        self.open(w, false)?;
        CompactFormatter.write_byte_array(w, value)
    }

    fn write_raw_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        self.open(w, false)?;
        w.write_all(fragment.as_bytes())
    }

    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, false)?;
        self.frames.push(Frame {
            array: true,
            has_value: false,
            compact: false,
        });
        w.write_all(b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, _w: &mut W, first: bool) -> io::Result<()> {
        self.pending = Some(first);
        Ok(())
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        if let Some(f) = self.frames.last_mut() {
            f.has_value = true;
        }
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, false)?;
        self.frames.push(Frame {
            array: false,
            has_value: false,
            compact: false,
        });
        w.write_all(b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        self.newline(w)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        if let Some(f) = self.frames.last_mut() {
            f.has_value = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn text(v: &Value) -> String {
        String::from_utf8(to_vec(v).expect("serialize")).expect("utf-8")
    }

    #[test]
    fn number_arrays_on_one_line_the_rest_pretty() {
        let v = json!({
            "ids": [1000, 8919, 16838],
            "logprobs": [-0.0625, -1.5e-7, 0.1],
            "empty": [],
            "obj": {},
            "words": ["a", "b"],
            "mixed": [1, "x", null, 2.5],
            "nested": [[1, 2], [3], {"k": [true, false]}],
            "s": "text with \"quotes\"\n",
        });
        let got = text(&v);
        assert_eq!(
            got,
            "{\n  \"ids\": [1000,8919,16838],\n  \"logprobs\": [-0.0625,-1.5e-7,0.1],\n  \
             \"empty\": [],\n  \"obj\": {},\n  \"words\": [\n    \"a\",\n    \"b\"\n  ],\n  \
             \"mixed\": [1,\n    \"x\",\n    null,\n    2.5\n  ],\n  \"nested\": [\n    [1,2],\n    \
             [3],\n    {\n      \"k\": [\n        true,\n        false\n      ]\n    }\n  ],\n  \
             \"s\": \"text with \\\"quotes\\\"\\n\"\n}"
        );
        let back: Value = serde_json::from_str(&got).expect("valid JSON");
        assert_eq!(back, v);
    }

    #[test]
    fn without_number_arrays_it_is_serde_json_pretty() {
        let v = json!({"a": {"b": ["x", {"c": null}], "d": true}, "e": [], "f": "g"});
        assert_eq!(text(&v), serde_json::to_string_pretty(&v).expect("pretty"));
    }

    #[test]
    fn numbers_survive_exactly() {
        let v = json!({"x": [u64::MAX, i64::MIN, 0.1, 1e300, -0.0, 123_456_789.123_456_78]});
        let back: Value = serde_json::from_slice(&to_vec(&v).expect("ser")).expect("de");
        assert_eq!(back, v);
        assert_eq!(
            serde_json::to_string(&back).expect("compact"),
            serde_json::to_string(&v).expect("compact")
        );
    }
}
