//! `heuristic`: the offline default when no LLM is configured, so the
//! pipeline runs out of the box. It recognises common demo intents in English
//! and Chinese (fibonacci, factorial, primes, sums, sorting, string reversal,
//! gcd/lcm, powers, roots, leap years, palindromes, statistics of a list,
//! base conversion, temperature conversion, multiplication tables,
//! arithmetic expressions...) and takes the numbers, lists and quoted strings
//! from the description ("fibonacci(7)" computes the 7th term). The plan is
//! real Python that computes the answer in the sandbox; nothing is
//! precomputed here. A description it does not understand gets no plan: the
//! task ends with `success: false` and says so.
//!
//! In a stateful session (`SANDBOX_SESSION=stateful`) a plan whose program
//! ends with a `print(...)` line runs as two steps, the way a notebook agent
//! works: step 0 defines the functions and data, step 1 prints the result
//! from what step 0 left in the interpreter. In oneshot mode nothing carries
//! over between steps, so the whole program is one step.

use serde_json::Value;

use super::{Decision, Plan};
use crate::executor::Execution;

/// `metadata.policy` of this policy.
pub const NAME: &str = "heuristic";

/// What the policy does for one task.
pub struct Heuristic {
    plan: Option<Intent>,
    /// The steps of the plan, in order.
    cells: Vec<String>,
    next_cell: usize,
}

/// A recognised intent and the code that answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// Short name (`fibonacci_nth`, `sort`, ...), recorded in `metadata.intent`.
    pub name: &'static str,
    pub code: String,
}

impl Heuristic {
    /// The policy for `description`; `stateful`: the steps share one
    /// interpreter, so the plan may be split into steps that build on each
    /// other (when the task allows more than one step, `max_steps`).
    pub fn new(description: &str, stateful: bool, max_steps: u32) -> Self {
        let plan = plan_for(description);
        let cells = plan
            .as_ref()
            .map(|i| i.cells(stateful && max_steps >= 2))
            .unwrap_or_default();
        Heuristic {
            plan,
            cells,
            next_cell: 0,
        }
    }

    /// The recognised intent, if any.
    pub fn intent(&self) -> Option<&Intent> {
        self.plan.as_ref()
    }

    /// The next step; after a failed step the task ends (the later cells
    /// rely on what the failed one should have defined).
    pub(crate) fn next(&mut self, last: Option<&Execution>) -> Decision {
        if self.plan.is_none() {
            return Decision::GiveUp(NO_PLAN.to_owned());
        }
        if last.is_some_and(|e| !e.success()) {
            return Decision::Finish(None);
        }
        match self.cells.get(self.next_cell) {
            Some(cell) => {
                self.next_cell += 1;
                Decision::Run(cell.clone())
            }
            None => Decision::Finish(None),
        }
    }

    /// The plan to cache: the whole program as one cell, so that a replay is
    /// right in either session mode.
    pub(crate) fn plan(&self) -> Option<Plan> {
        self.plan.as_ref().map(|i| Plan {
            policy: NAME.to_owned(),
            code: vec![i.code.clone()],
            replies: Vec::new(),
        })
    }
}

impl Intent {
    /// The steps of this plan. Stateful: the program split before its final
    /// top-level `print(...)` line when there is something before it (step
    /// 0 defines, step 1 uses what step 0 defined); oneshot, or a program
    /// that does not end that way: the whole program as one step.
    pub fn cells(&self, stateful: bool) -> Vec<String> {
        let whole = vec![self.code.clone()];
        if !stateful {
            return whole;
        }
        let body = self.code.trim_end_matches('\n');
        let at = body.rfind('\n').map_or(0, |i| i + 1);
        let (setup, last) = body.split_at(at);
        let balanced =
            |open: char, close: char| last.matches(open).count() == last.matches(close).count();
        if setup.trim().is_empty()
            || !last.starts_with("print(")
            || !last.ends_with(')')
            || !balanced('(', ')')
            || !balanced('[', ']')
            || setup.trim_end().ends_with(['\\', ',', '(', '[', '{', ':'])
        {
            return whole;
        }
        vec![format!("{}\n", setup.trim_end()), format!("{last}\n")]
    }
}

/// The final result of a task the heuristic policy does not understand.
pub const NO_PLAN: &str = "No offline plan exists for this task: the built-in heuristic policy \
only understands simple computing intents (fibonacci, factorial, primes, sums, sorting, string \
reversal, gcd/lcm, powers, roots, leap years, palindromes, list statistics, base and temperature \
conversion, multiplication tables, arithmetic expressions). Set LLM_BASE_URL to let a model solve it.";

// ---------------------------------------------------------------------------
// Understanding the description.

/// A number found in the description.
#[derive(Debug, Clone, PartialEq)]
struct Num {
    /// Byte range in the lowercased description.
    at: usize,
    end: usize,
    value: f64,
    /// As written (ASCII digits) or converted (Chinese numerals).
    text: String,
}

impl Num {
    fn int(&self) -> Option<i64> {
        (self.value.fract() == 0.0 && self.value.abs() < 1e15).then_some(self.value as i64)
    }
}

/// The parsed description.
struct Text {
    /// As written, trimmed.
    original: String,
    lower: String,
    nums: Vec<Num>,
}

impl Text {
    fn new(description: &str) -> Self {
        let original = description.trim().to_owned();
        let lower = original.to_lowercase();
        let nums = find_numbers(&lower);
        Text {
            original,
            lower,
            nums,
        }
    }

    fn has(&self, words: &[&str]) -> bool {
        words.iter().any(|w| self.lower.contains(w))
    }

    fn ints(&self) -> Vec<i64> {
        self.nums.iter().filter_map(Num::int).collect()
    }

    fn first_int(&self) -> Option<i64> {
        self.ints().first().copied()
    }

    /// The integer right after one of `markers` ("first 10", "前10", "第十").
    fn int_after(&self, markers: &[&str]) -> Option<i64> {
        for m in markers {
            let mut from = 0;
            while let Some(pos) = self.lower[from..].find(m) {
                let end = from + pos + m.len();
                let gap = self.lower[end..].len() - self.lower[end..].trim_start().len();
                if let Some(n) = self.nums.iter().find(|n| n.at == end + gap) {
                    if let Some(i) = n.int() {
                        return Some(i);
                    }
                }
                from = end;
            }
        }
        None
    }

    /// The first `[...]` or `(...)` literal list holding at least two items.
    fn list_literal(&self) -> Option<String> {
        for (open, close) in [('[', ']'), ('(', ')'), ('{', '}')] {
            let mut from = 0;
            while let Some(s) = self.lower[from..].find(open) {
                let start = from + s;
                let Some(e) = self.lower[start..].find(close) else {
                    break;
                };
                let inner = &self.lower[start + 1..start + e];
                if inner.contains(',') || inner.contains('，') {
                    return Some(format!("[{}]", inner.replace('，', ",")));
                }
                from = start + 1;
            }
        }
        None
    }

    /// A list of numbers: a literal list, else every number in the text
    /// (when there are at least two).
    fn number_list(&self) -> Option<String> {
        if let Some(l) = self.list_literal() {
            return Some(l);
        }
        (self.nums.len() >= 2).then(|| {
            let items: Vec<&str> = self.nums.iter().map(|n| n.text.as_str()).collect();
            format!("[{}]", items.join(", "))
        })
    }
}

/// The first quoted string of the original description ('…', "…", “…”, ‘…’, 「…」, 『…』).
fn quoted(description: &str) -> Option<String> {
    let pairs = [
        ('\'', '\''),
        ('"', '"'),
        ('“', '”'),
        ('‘', '’'),
        ('「', '」'),
        ('『', '』'),
    ];
    let mut best: Option<(usize, String)> = None;
    for (open, close) in pairs {
        let mut search = 0;
        while let Some(s) = description[search..].find(open) {
            let start = search + s + open.len_utf8();
            // An apostrophe inside a word ("don't") does not open a quote.
            let prev = description[..search + s].chars().next_back();
            if open == '\'' && prev.is_some_and(char::is_alphanumeric) {
                search = start;
                continue;
            }
            if let Some(e) = description[start..].find(close) {
                let inner = &description[start..start + e];
                if !inner.is_empty() && best.as_ref().is_none_or(|(b, _)| search + s < *b) {
                    best = Some((search + s, inner.to_owned()));
                }
            }
            break;
        }
    }
    best.map(|(_, s)| s)
}

const CN_DIGITS: [(char, i64); 12] = [
    ('零', 0),
    ('〇', 0),
    ('一', 1),
    ('二', 2),
    ('两', 2),
    ('三', 3),
    ('四', 4),
    ('五', 5),
    ('六', 6),
    ('七', 7),
    ('八', 8),
    ('九', 9),
];

fn cn_digit(c: char) -> Option<i64> {
    CN_DIGITS.iter().find(|(d, _)| *d == c).map(|(_, v)| *v)
}

fn is_cn_numeral(c: char) -> bool {
    cn_digit(c).is_some() || matches!(c, '十' | '百' | '千' | '万')
}

/// 三十七 → 37, 一百零五 → 105, 十 → 10, 两千 → 2000, 一万 → 10000.
fn cn_value(s: &str) -> Option<i64> {
    let mut total = 0i64;
    let mut section = 0i64;
    let mut digit: Option<i64> = None;
    for c in s.chars() {
        if let Some(d) = cn_digit(c) {
            digit = Some(d);
            continue;
        }
        let unit = match c {
            '十' => 10,
            '百' => 100,
            '千' => 1000,
            '万' => {
                section += digit.take().unwrap_or(0);
                total += section.max(1) * 10_000;
                section = 0;
                continue;
            }
            _ => return None,
        };
        section += digit.take().unwrap_or(1) * unit;
    }
    section += digit.unwrap_or(0);
    Some(total + section)
}

/// Numbers in `lower`: ASCII (`-3`, `2.5`, `1,000`→ no: `1`,`000` are two) and
/// Chinese numerals. Digits glued to a letter (`python3`, `utf8`) are not numbers.
fn find_numbers(lower: &str) -> Vec<Num> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = lower.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let prev = if i > 0 { Some(chars[i - 1].1) } else { None };
        if c.is_ascii_digit() {
            let glued = prev.is_some_and(|p| p.is_ascii_alphabetic() || p == '_');
            let mut j = i;
            while j < chars.len() && chars[j].1.is_ascii_digit() {
                j += 1;
            }
            if j + 1 < chars.len() && chars[j].1 == '.' && chars[j + 1].1.is_ascii_digit() {
                j += 1;
                while j < chars.len() && chars[j].1.is_ascii_digit() {
                    j += 1;
                }
            }
            let end = chars.get(j).map_or(lower.len(), |(b, _)| *b);
            let negative = prev == Some('-')
                && (i < 2 || !chars[i - 2].1.is_ascii_alphanumeric() && chars[i - 2].1 != ')');
            let (start, text) = if negative {
                (chars[i - 1].0, format!("-{}", &lower[at..end]))
            } else {
                (at, lower[at..end].to_owned())
            };
            if !glued {
                if let Ok(value) = text.parse::<f64>() {
                    out.push(Num {
                        at: start,
                        end,
                        value,
                        text,
                    });
                }
            }
            i = j;
        } else if is_cn_numeral(c) {
            let mut j = i;
            while j < chars.len() && is_cn_numeral(chars[j].1) {
                j += 1;
            }
            let end = chars.get(j).map_or(lower.len(), |(b, _)| *b);
            let word = &lower[at..end];
            let next = chars.get(j).map(|(_, c)| *c);
            // 一个 / 一下 / 一些 ... mean "a", not 1.
            let article = word == "一"
                && next.is_some_and(|n| "个下些起种段道款组样次直共切般定".contains(n));
            if !article {
                if let Some(v) = cn_value(word) {
                    out.push(Num {
                        at,
                        end,
                        value: v as f64,
                        text: v.to_string(),
                    });
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// A Python string literal for `s` (JSON string syntax is valid Python).
fn py_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// A Python expression evaluating the literal list text safely.
fn py_list(literal: &str) -> String {
    format!("ast.literal_eval({})", py_str(literal))
}

// ---------------------------------------------------------------------------
// Intents, most specific first.

/// Recognises one intent (or not) in a parsed description and its quoted string.
type Rule = fn(&Text, Option<&str>) -> Option<Intent>;

/// The plan for a description, or `None` when no intent matches.
pub fn plan_for(description: &str) -> Option<Intent> {
    let t = Text::new(description);
    let q = quoted(description);
    let rules: [Rule; 21] = [
        literal_print,
        fibonacci,
        factorial,
        primes,
        gcd_lcm,
        leap_year,
        palindrome,
        reverse,
        string_ops,
        sort,
        statistics,
        sum,
        power,
        square_root,
        base_conversion,
        temperature,
        even_odd,
        multiplication_table,
        count_range,
        hello_world,
        arithmetic,
    ];
    rules.iter().find_map(|rule| rule(&t, q.as_deref()))
}

fn intent(name: &'static str, code: String) -> Option<Intent> {
    Some(Intent { name, code })
}

/// The description is itself one `print(...)` call.
fn literal_print(t: &Text, _: Option<&str>) -> Option<Intent> {
    let d = t.original.as_str();
    (d.starts_with("print(") && d.ends_with(')') && !d.contains('\n'))
        .then(|| Intent {
            name: "print",
            code: format!("{}\n", d),
        })
        .filter(|_| !t.has(&[";", "import", "__", "open(", "exec", "eval"]))
}

fn hello_world(t: &Text, _: Option<&str>) -> Option<Intent> {
    if t.has(&["hello world", "hello, world", "你好世界", "你好，世界"]) {
        return intent("hello_world", "print(\"Hello, World!\")\n".to_owned());
    }
    None
}

const FIRST: [&str; 5] = ["first ", "前", "the first", "first", "top "];
const BELOW: [&str; 12] = [
    "below ",
    "under ",
    "less than ",
    "up to ",
    "upto ",
    "smaller than ",
    "not exceeding ",
    "小于",
    "不超过",
    "以内",
    "以下",
    "之内",
];

/// "below 100", "100以内", "不超过100": the bound, if the text says so.
fn bound(t: &Text) -> Option<i64> {
    if let Some(n) = t.int_after(&BELOW[..9]) {
        return Some(n);
    }
    if let Some(n) = t.int_after(&["小于", "不超过"]) {
        return Some(n);
    }
    // "100以内": the number right before the marker.
    for m in ["以内", "以下", "之内", "内的"] {
        if let Some(pos) = t.lower.find(m) {
            if let Some(n) = t
                .nums
                .iter()
                .rev()
                .find(|n| n.end <= pos && t.lower[n.end..pos].trim().is_empty())
            {
                return n.int();
            }
        }
    }
    None
}

fn fibonacci(t: &Text, _: Option<&str>) -> Option<Intent> {
    if !t.has(&["fibonacci", "fib(", "斐波那契", "斐波纳契", "费波那契"]) {
        return None;
    }
    let body = "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n";
    if let Some(n) = t.int_after(&FIRST).filter(|n| (1..=10_000).contains(n)) {
        return intent(
            "fibonacci_first_n",
            format!("{body}print([fibonacci(i) for i in range(1, {n} + 1)])\n"),
        );
    }
    if let Some(limit) = bound(t).filter(|&n| n >= 0) {
        return intent(
            "fibonacci_below",
            format!(
                "terms = []\na, b = 0, 1\nwhile a <= {limit}:\n    terms.append(a)\n    a, b = b, a + b\nprint(terms)\n"
            ),
        );
    }
    let n = t.first_int().unwrap_or(10);
    if !(0..=100_000).contains(&n) {
        return None;
    }
    intent(
        "fibonacci_nth",
        format!("import sys\nsys.set_int_max_str_digits(0)\n\n{body}print(fibonacci({n}))\n"),
    )
}

fn factorial(t: &Text, _: Option<&str>) -> Option<Intent> {
    let bang = t
        .nums
        .iter()
        .find(|n| t.lower[n.end..].starts_with('!'))
        .and_then(Num::int);
    if !t.has(&["factorial", "阶乘"]) && bang.is_none() {
        return None;
    }
    let n = bang.or_else(|| t.first_int()).unwrap_or(5);
    if !(0..=20_000).contains(&n) {
        return None;
    }
    intent(
        "factorial",
        format!(
            "import sys\nsys.set_int_max_str_digits(0)\n\ndef factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result\n\nprint(factorial({n}))\n"
        ),
    )
}

const IS_PRIME: &str = "def is_prime(n):\n    if n < 2:\n        return False\n    if n % 2 == 0:\n        return n == 2\n    i = 3\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 2\n    return True\n\n";

fn primes(t: &Text, _: Option<&str>) -> Option<Intent> {
    if !t.has(&["prime", "质数", "素数", "质因数"]) {
        return None;
    }
    if t.has(&["prime factor", "factorize", "factorise", "质因数", "分解"]) {
        let n = t.first_int().filter(|n| *n >= 2 && *n <= 10i64.pow(14))?;
        return intent(
            "prime_factors",
            format!(
                "def prime_factors(n):\n    factors, d = [], 2\n    while d * d <= n:\n        while n % d == 0:\n            factors.append(d)\n            n //= d\n        d += 1\n    if n > 1:\n        factors.append(n)\n    return factors\n\nprint(prime_factors({n}))\n"
            ),
        );
    }
    if let Some(n) = t.int_after(&["第"]).filter(|n| (1..=100_000).contains(n)) {
        if t.lower.contains("个") || t.lower.contains("位") {
            return nth_prime(n);
        }
    }
    if let Some(n) = t.nums.iter().find_map(|n| {
        let after = &t.lower[n.end..];
        ["st prime", "nd prime", "rd prime", "th prime"]
            .iter()
            .any(|s| after.starts_with(s))
            .then(|| n.int())
            .flatten()
    }) {
        return nth_prime(n);
    }
    let asks_whether = t.has(&[
        "is ",
        "whether",
        "check",
        "是否",
        "是不是",
        "是质数吗",
        "是素数吗",
        "判断",
    ]) && !t.has(&["all ", "list", "所有", "哪些", "找出", "first", "前"]);
    if asks_whether {
        let n = t.first_int()?;
        return intent("is_prime", format!("{IS_PRIME}print(is_prime({n}))\n"));
    }
    if let Some(n) = t.int_after(&FIRST).filter(|n| (1..=100_000).contains(n)) {
        return intent(
            "first_n_primes",
            format!("{IS_PRIME}primes = []\ncandidate = 2\nwhile len(primes) < {n}:\n    if is_prime(candidate):\n        primes.append(candidate)\n    candidate += 1\nprint(primes)\n"),
        );
    }
    let limit = bound(t).or_else(|| t.first_int()).unwrap_or(100);
    if !(2..=10_000_000).contains(&limit) {
        return None;
    }
    let sieve = format!("def primes_up_to(n):\n    sieve = [True] * (n + 1)\n    sieve[0:2] = [False, False]\n    for i in range(2, int(n ** 0.5) + 1):\n        if sieve[i]:\n            sieve[i * i :: i] = [False] * len(sieve[i * i :: i])\n    return [i for i, p in enumerate(sieve) if p]\n\nprimes = primes_up_to({limit})\n");
    if t.has(&["sum", "total", "和"]) {
        return intent("sum_of_primes", format!("{sieve}print(sum(primes))\n"));
    }
    if t.has(&["how many", "count", "number of", "多少", "个数", "数量"]) {
        return intent("count_primes", format!("{sieve}print(len(primes))\n"));
    }
    intent("primes_up_to", format!("{sieve}print(primes)\n"))
}

fn nth_prime(n: i64) -> Option<Intent> {
    intent(
        "nth_prime",
        format!("{IS_PRIME}count, candidate = 0, 1\nwhile count < {n}:\n    candidate += 1\n    if is_prime(candidate):\n        count += 1\nprint(candidate)\n"),
    )
}

fn gcd_lcm(t: &Text, _: Option<&str>) -> Option<Intent> {
    let gcd = t.has(&[
        "gcd",
        "greatest common divisor",
        "greatest common factor",
        "highest common factor",
        "hcf",
        "最大公约数",
        "最大公因数",
    ]);
    let lcm = t.has(&[
        "lcm",
        "least common multiple",
        "lowest common multiple",
        "最小公倍数",
    ]);
    if !gcd && !lcm {
        return None;
    }
    let nums = t.ints();
    if nums.len() < 2 {
        return None;
    }
    let args = nums
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if lcm {
        return intent(
            "lcm",
            format!("from functools import reduce\nfrom math import gcd\n\nnumbers = [{args}]\nprint(reduce(lambda a, b: a * b // gcd(a, b), numbers))\n"),
        );
    }
    intent(
        "gcd",
        format!("from functools import reduce\nfrom math import gcd\n\nnumbers = [{args}]\nprint(reduce(gcd, numbers))\n"),
    )
}

fn leap_year(t: &Text, _: Option<&str>) -> Option<Intent> {
    if !t.has(&["leap year", "leap-year", "闰年"]) {
        return None;
    }
    let year = t.first_int()?;
    intent(
        "leap_year",
        format!("year = {year}\nprint(year % 4 == 0 and (year % 100 != 0 or year % 400 == 0))\n"),
    )
}

fn palindrome(t: &Text, q: Option<&str>) -> Option<Intent> {
    if !t.has(&["palindrome", "回文"]) {
        return None;
    }
    let subject = match q {
        Some(s) => py_str(s),
        None => py_str(&t.nums.first()?.text),
    };
    intent(
        "palindrome",
        format!("text = {subject}\ncleaned = [c.lower() for c in text if c.isalnum()]\nprint(cleaned == cleaned[::-1])\n"),
    )
}

fn reverse(t: &Text, q: Option<&str>) -> Option<Intent> {
    if !t.has(&["reverse", "反转", "倒序", "翻转", "逆序", "颠倒"]) {
        return None;
    }
    if t.has(&["sort", "排序"]) {
        return None;
    }
    if let Some(s) = q {
        return intent(
            "reverse_string",
            format!("text = {}\nprint(text[::-1])\n", py_str(s)),
        );
    }
    if let Some(list) = t.list_literal() {
        return intent(
            "reverse_list",
            format!(
                "import ast\n\nitems = {}\nprint(items[::-1])\n",
                py_list(&list)
            ),
        );
    }
    // "reverse the word hello" / "reverse hello": the last word.
    let word = t
        .lower
        .split(|c: char| !c.is_alphanumeric())
        .rfind(|w| !w.is_empty() && !["string", "word", "the", "reverse", "text"].contains(w))?;
    intent(
        "reverse_string",
        format!("text = {}\nprint(text[::-1])\n", py_str(word)),
    )
}

fn string_ops(t: &Text, q: Option<&str>) -> Option<Intent> {
    let s = q?;
    let lit = py_str(s);
    if t.has(&["vowel", "元音"]) {
        return intent(
            "count_vowels",
            format!("text = {lit}\nprint(sum(1 for c in text.lower() if c in \"aeiou\"))\n"),
        );
    }
    if t.has(&[
        "word count",
        "count the words",
        "number of words",
        "how many words",
        "单词数",
        "单词个数",
        "多少个单词",
    ]) {
        return intent(
            "count_words",
            format!("text = {lit}\nprint(len(text.split()))\n"),
        );
    }
    if t.has(&[
        "uppercase",
        "upper case",
        "upper-case",
        "capital letters",
        "大写",
    ]) {
        return intent("uppercase", format!("text = {lit}\nprint(text.upper())\n"));
    }
    if t.has(&["lowercase", "lower case", "lower-case", "小写"]) {
        return intent("lowercase", format!("text = {lit}\nprint(text.lower())\n"));
    }
    if t.has(&[
        "length",
        "how many characters",
        "number of characters",
        "长度",
        "多少个字符",
        "字符数",
    ]) {
        return intent("string_length", format!("text = {lit}\nprint(len(text))\n"));
    }
    if t.has(&["print", "output", "打印", "输出", "echo"]) {
        return intent("print_string", format!("print({lit})\n"));
    }
    None
}

fn sort(t: &Text, q: Option<&str>) -> Option<Intent> {
    if !t.has(&["sort", "order", "排序", "排列", "从小到大", "从大到小"]) {
        return None;
    }
    let descending = t.has(&[
        "descend",
        "decreas",
        "largest to smallest",
        "high to low",
        "biggest first",
        "reverse",
        "降序",
        "从大到小",
        "由大到小",
    ]);
    let items = match t.list_literal() {
        Some(l) => py_list(&l),
        None => match t.number_list() {
            Some(l) => py_list(&l),
            None => {
                let s = q?;
                // Sort the words of a quoted text.
                format!("{}.split()", py_str(s))
            }
        },
    };
    let rev = if descending { ", reverse=True" } else { "" };
    intent(
        if descending {
            "sort_descending"
        } else {
            "sort_ascending"
        },
        format!("import ast\n\nitems = {items}\nprint(sorted(items{rev}))\n"),
    )
}

fn statistics(t: &Text, _: Option<&str>) -> Option<Intent> {
    let ops: [(&[&str], &str, &str); 5] = [
        (
            &["average", "mean", "平均"],
            "mean",
            "statistics.mean(items)",
        ),
        (&["median", "中位数"], "median", "statistics.median(items)"),
        (
            &[
                "maximum",
                "max ",
                "max(",
                "largest",
                "biggest",
                "greatest",
                "最大值",
                "最大的",
                "最大数",
            ],
            "max",
            "max(items)",
        ),
        (
            &[
                "minimum",
                "min ",
                "min(",
                "smallest",
                "lowest",
                "最小值",
                "最小的",
                "最小数",
            ],
            "min",
            "min(items)",
        ),
        (&["product", "乘积"], "product", "math.prod(items)"),
    ];
    for (words, name, expr) in ops {
        if t.has(words) {
            let list = t.number_list()?;
            return intent(
                match name {
                    "mean" => "list_mean",
                    "median" => "list_median",
                    "max" => "list_max",
                    "min" => "list_min",
                    _ => "list_product",
                },
                format!(
                    "import ast\nimport math\nimport statistics\n\nitems = {}\nprint({expr})\n",
                    py_list(&list)
                ),
            );
        }
    }
    None
}

fn sum(t: &Text, _: Option<&str>) -> Option<Intent> {
    let sum_words = [
        "sum", "total", "add up", "add the", "求和", "的和", "之和", "总和", "加到", "相加", "累加",
    ];
    if !t.has(&sum_words) {
        return None;
    }
    if t.has(&["digit", "各位", "数字之和", "数位"]) {
        let n = t.nums.first()?.text.trim_start_matches('-').to_owned();
        return intent(
            "digit_sum",
            format!(
                "number = {}\nprint(sum(int(d) for d in number if d.isdigit()))\n",
                py_str(&n)
            ),
        );
    }
    if let Some(list) = t.list_literal() {
        return intent(
            "list_sum",
            format!(
                "import ast\n\nitems = {}\nprint(sum(items))\n",
                py_list(&list)
            ),
        );
    }
    let ints = t.ints();
    let (a, b) = match ints.as_slice() {
        [] => return None,
        [n] => (1, *n),
        [a, b, ..] => (*a, *b),
    };
    if b < a || b - a > 100_000_000 {
        return None;
    }
    let (name, filter, term) = if t.has(&["square", "平方"]) {
        ("sum_of_squares", "", "i * i")
    } else if t.has(&["cube", "立方"]) {
        ("sum_of_cubes", "", "i ** 3")
    } else if t.has(&["even", "偶数"]) {
        ("sum_of_evens", " if i % 2 == 0", "i")
    } else if t.has(&["odd", "奇数"]) {
        ("sum_of_odds", " if i % 2 == 1", "i")
    } else {
        ("sum_range", "", "i")
    };
    intent(
        name,
        format!("total = sum({term} for i in range({a}, {b} + 1){filter})\nprint(total)\n"),
    )
}

fn power(t: &Text, _: Option<&str>) -> Option<Intent> {
    let word = t.has(&["power", "次方", "次幂", "乘方", "raised to", "幂"]);
    let sym = t.has(&["^", "**"]);
    if !word && !sym {
        return None;
    }
    let ints = t.ints();
    let [base, exp, ..] = ints.as_slice() else {
        return None;
    };
    if !(0..=100_000).contains(exp) {
        return None;
    }
    intent(
        "power",
        format!("import sys\nsys.set_int_max_str_digits(0)\n\nprint({base} ** {exp})\n"),
    )
}

fn square_root(t: &Text, _: Option<&str>) -> Option<Intent> {
    if !t.has(&["square root", "sqrt", "平方根", "开方", "开根号"]) {
        return None;
    }
    let n = t.nums.first()?;
    if n.value < 0.0 {
        return None;
    }
    intent(
        "square_root",
        format!("import math\n\nroot = math.sqrt({})\nprint(int(root) if root.is_integer() else root)\n", n.text),
    )
}

fn base_conversion(t: &Text, _: Option<&str>) -> Option<Intent> {
    let n = t.first_int()?;
    let (name, spec) = if t.has(&["binary", "二进制"]) {
        ("to_binary", "b")
    } else if t.has(&["hexadecimal", " hex", "十六进制"]) {
        ("to_hex", "x")
    } else if t.has(&["octal", "八进制"]) {
        ("to_octal", "o")
    } else {
        return None;
    };
    intent(name, format!("print(format({n}, {}))\n", py_str(spec)))
}

fn temperature(t: &Text, _: Option<&str>) -> Option<Intent> {
    let c = t.has(&["celsius", "摄氏"]);
    let f = t.has(&["fahrenheit", "华氏"]);
    if !(c && f) {
        return None;
    }
    let n = t.nums.first()?;
    // Whichever scale is named right after the number is the input.
    let after = &t.lower[n.end..];
    let from_f = after.trim_start().starts_with("°f")
        || after.trim_start().starts_with("f ")
        || after.trim_start().starts_with("fahrenheit")
        || after.trim_start().starts_with("华氏")
        || (t.lower.find("fahrenheit").or(t.lower.find("华氏"))
            < t.lower.find("celsius").or(t.lower.find("摄氏"))
            && !after.trim_start().starts_with("celsius")
            && !after.trim_start().starts_with("摄氏"));
    let code = if from_f {
        format!(
            "fahrenheit = {}\nprint(round((fahrenheit - 32) * 5 / 9, 2))\n",
            n.text
        )
    } else {
        format!(
            "celsius = {}\nprint(round(celsius * 9 / 5 + 32, 2))\n",
            n.text
        )
    };
    intent(
        if from_f {
            "fahrenheit_to_celsius"
        } else {
            "celsius_to_fahrenheit"
        },
        code,
    )
}

fn even_odd(t: &Text, _: Option<&str>) -> Option<Intent> {
    if !t.has(&[
        "even or odd",
        "odd or even",
        "is even",
        "is odd",
        "奇数还是偶数",
        "偶数还是奇数",
        "是偶数吗",
        "是奇数吗",
        "是不是偶数",
        "是不是奇数",
        "奇偶",
    ]) {
        return None;
    }
    let n = t.first_int()?;
    intent(
        "even_odd",
        format!("n = {n}\nprint(\"even\" if n % 2 == 0 else \"odd\")\n"),
    )
}

fn multiplication_table(t: &Text, _: Option<&str>) -> Option<Intent> {
    if !t.has(&["multiplication table", "times table", "乘法表", "九九"]) {
        return None;
    }
    let n = if t.lower.contains("九九") {
        9
    } else {
        t.first_int().unwrap_or(9)
    };
    if !(1..=50).contains(&n) {
        return None;
    }
    intent(
        "multiplication_table",
        format!("n = {n}\nfor i in range(1, n + 1):\n    print(\"\\t\".join(f\"{{j}}x{{i}}={{i * j}}\" for j in range(1, i + 1)))\n"),
    )
}

fn count_range(t: &Text, _: Option<&str>) -> Option<Intent> {
    if !t.has(&[
        "print",
        "count from",
        "list the numbers",
        "output",
        "打印",
        "输出",
        "列出",
    ]) {
        return None;
    }
    let ints = t.ints();
    let [a, b] = ints.as_slice() else {
        return None;
    };
    let range_word = t.has(&[" to ", "到", "至", "through", "-"]);
    if !range_word || b < a || b - a > 10_000 {
        return None;
    }
    intent(
        "print_range",
        format!("for i in range({a}, {b} + 1):\n    print(i)\n"),
    )
}

/// An arithmetic expression in the text: digits, spaces, `+-*/%().^×÷`, with
/// at least one operator between two numbers.
fn arithmetic(t: &Text, _: Option<&str>) -> Option<Intent> {
    let is_expr_char = |c: char| c.is_ascii_digit() || " .+-*/%()^×÷".contains(c);
    let mut best = "";
    let mut start = None;
    let lower = &t.lower;
    for (i, c) in lower.char_indices().chain([(lower.len(), '\0')]) {
        if c != '\0' && is_expr_char(c) {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            let run = lower[s..i].trim();
            if run.len() > best.len() {
                best = run;
            }
        }
    }
    let has_op = best.contains(['+', '*', '/', '%', '^', '×', '÷'])
        || best.trim_start_matches('-').contains('-');
    let digit_groups = best
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .count();
    if !has_op || digit_groups < 2 {
        return None;
    }
    // "2024-01-15" is a date, not a subtraction (and 01 is no Python literal).
    let leading_zero = best
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .any(|g| g.len() > 1 && g.starts_with('0') && !g.starts_with("0."));
    if leading_zero {
        return None;
    }
    let expr = best.replace('^', "**").replace('×', "*").replace('÷', "/");
    let expr = expr
        .trim_end_matches(['+', '-', '*', '/', '%', '.', ' '])
        .trim();
    if expr.is_empty() || expr.matches('(').count() != expr.matches(')').count() {
        return None;
    }
    intent(
        "arithmetic",
        format!("result = {expr}\nprint(int(result) if isinstance(result, float) and result.is_integer() else result)\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(d: &str) -> Option<&'static str> {
        plan_for(d).map(|i| i.name)
    }

    #[test]
    fn fibonacci_takes_the_number_from_the_text() {
        let i = plan_for("Compute fibonacci(7)").expect("plan");
        assert_eq!(i.name, "fibonacci_nth");
        assert!(i.code.contains("print(fibonacci(7))"), "{}", i.code);
        let i = plan_for("写一个Python函数计算斐波那契数列第10项").expect("plan");
        assert!(i.code.contains("print(fibonacci(10))"), "{}", i.code);
        let i = plan_for("计算斐波那契数列第二十项").expect("plan");
        assert!(i.code.contains("print(fibonacci(20))"), "{}", i.code);
        assert_eq!(
            name("List the first 10 Fibonacci numbers"),
            Some("fibonacci_first_n")
        );
        assert_eq!(name("输出斐波那契数列的前15项"), Some("fibonacci_first_n"));
        assert_eq!(name("fibonacci numbers below 100"), Some("fibonacci_below"));
    }

    #[test]
    fn chinese_numerals() {
        assert_eq!(cn_value("三十七"), Some(37));
        assert_eq!(cn_value("一百零五"), Some(105));
        assert_eq!(cn_value("十"), Some(10));
        assert_eq!(cn_value("两千"), Some(2000));
        assert_eq!(cn_value("一万二千"), Some(12000));
        let nums = find_numbers("写一个函数计算第十项");
        assert_eq!(nums.len(), 1);
        assert_eq!(nums[0].value, 10.0);
        assert!(find_numbers("python3 utf8").is_empty());
    }

    #[test]
    fn factorial_primes_and_friends() {
        assert!(plan_for("计算5的阶乘")
            .expect("plan")
            .code
            .contains("factorial(5)"));
        assert!(plan_for("What is 12!?")
            .expect("plan")
            .code
            .contains("factorial(12)"));
        assert_eq!(name("找出100以内的所有质数"), Some("primes_up_to"));
        assert!(plan_for("找出100以内的所有质数")
            .expect("plan")
            .code
            .contains("primes_up_to(100)"));
        assert_eq!(name("Is 97 a prime number?"), Some("is_prime"));
        assert_eq!(name("判断97是否是素数"), Some("is_prime"));
        assert_eq!(name("the first 10 primes"), Some("first_n_primes"));
        assert_eq!(name("第10个质数是多少"), Some("nth_prime"));
        assert_eq!(name("What is the 10th prime?"), Some("nth_prime"));
        assert_eq!(name("prime factors of 360"), Some("prime_factors"));
        assert_eq!(name("sum of primes below 50"), Some("sum_of_primes"));
        assert_eq!(
            name("how many primes are there below 1000"),
            Some("count_primes")
        );
        assert_eq!(name("gcd of 48 and 18"), Some("gcd"));
        assert_eq!(name("求12和18的最小公倍数"), Some("lcm"));
    }

    #[test]
    fn sums_sorting_strings() {
        let i = plan_for("Sum the integers from 1 to 100").expect("plan");
        assert!(i.code.contains("range(1, 100 + 1)"), "{}", i.code);
        assert_eq!(name("计算1到100的和"), Some("sum_range"));
        assert_eq!(name("从1加到100"), Some("sum_range"));
        assert_eq!(name("sum of squares from 1 to 10"), Some("sum_of_squares"));
        assert_eq!(
            name("sum of the even numbers from 1 to 100"),
            Some("sum_of_evens")
        );
        assert_eq!(name("sum of [1, 2, 3.5]"), Some("list_sum"));
        assert_eq!(name("sum of the digits of 12345"), Some("digit_sum"));
        let i = plan_for("Sort the numbers [5, 3, 9, 1] in ascending order").expect("plan");
        assert_eq!(i.name, "sort_ascending");
        assert!(
            i.code.contains("ast.literal_eval(\"[5, 3, 9, 1]\")"),
            "{}",
            i.code
        );
        assert_eq!(name("将 5, 3, 9, 1 从大到小排序"), Some("sort_descending"));
        assert_eq!(
            name("Reverse the string 'hello world'"),
            Some("reverse_string")
        );
        assert_eq!(name("反转字符串“你好世界”"), Some("reverse_string"));
        assert_eq!(
            name("Is 'A man, a plan, a canal: Panama' a palindrome?"),
            Some("palindrome")
        );
        assert_eq!(
            name("count the vowels in 'programming'"),
            Some("count_vowels")
        );
        assert_eq!(name("Convert 'hello' to uppercase"), Some("uppercase"));
    }

    #[test]
    fn misc_intents() {
        assert_eq!(name("What is 2 to the power of 10?"), Some("power"));
        assert_eq!(name("2的10次方"), Some("power"));
        assert_eq!(name("square root of 144"), Some("square_root"));
        assert_eq!(name("Is 2024 a leap year?"), Some("leap_year"));
        assert_eq!(name("2023年是闰年吗"), Some("leap_year"));
        assert_eq!(name("average of 3, 4, 5"), Some("list_mean"));
        assert_eq!(name("找出 [3, 9, 2] 中的最大值"), Some("list_max"));
        assert_eq!(name("convert 255 to binary"), Some("to_binary"));
        assert_eq!(
            name("convert 100 celsius to fahrenheit"),
            Some("celsius_to_fahrenheit")
        );
        assert_eq!(
            name("convert 212 fahrenheit to celsius"),
            Some("fahrenheit_to_celsius")
        );
        assert_eq!(name("打印九九乘法表"), Some("multiplication_table"));
        assert_eq!(name("Is 7 even or odd?"), Some("even_odd"));
        assert_eq!(name("print the numbers from 1 to 10"), Some("print_range"));
        assert_eq!(name("print hello world"), Some("hello_world"));
        let i = plan_for("print('Hello World')").expect("plan");
        assert_eq!(i.code, "print('Hello World')\n");
        assert_eq!(name("What day of the week was 2024-01-15?"), None);
        let i = plan_for("Compute 12 * (3 + 4)").expect("plan");
        assert_eq!(i.name, "arithmetic");
        assert!(i.code.starts_with("result = 12 * (3 + 4)\n"), "{}", i.code);
        assert_eq!(name("计算 3+5×2"), Some("arithmetic"));
    }

    #[test]
    fn unknown_descriptions_get_no_plan() {
        for d in [
            "Write a haiku about autumn",
            "Summarize the history of Rome",
            "搜索Python编程教程",
            "Explain how TCP works",
        ] {
            assert_eq!(plan_for(d), None, "{d}");
        }
        for stateful in [true, false] {
            let mut h = Heuristic::new("Write a haiku about autumn", stateful, 5);
            assert_eq!(h.next(None), Decision::GiveUp(NO_PLAN.to_owned()));
            assert!(h.plan().is_none());
        }
    }

    const SAMPLES: [&str; 24] = [
        "Compute fibonacci(7)",
        "List the first 10 Fibonacci numbers",
        "fibonacci numbers below 100",
        "What is 12!?",
        "the first 10 primes",
        "sum of primes below 50",
        "prime factors of 360",
        "What is the 10th prime?",
        "Is 97 a prime number?",
        "gcd of 48 and 18",
        "Is 2024 a leap year?",
        "Reverse the string 'hello world'",
        "count the vowels in 'programming'",
        "Sort the numbers [5, 3, 9, 1] in ascending order",
        "average of 3, 4, 5",
        "sum of squares from 1 to 10",
        "convert 255 to binary",
        "convert 100 celsius to fahrenheit",
        "Is 7 even or odd?",
        "打印九九乘法表",
        "print the numbers from 1 to 10",
        "print hello world",
        "Compute 12 * (3 + 4)",
        "计算斐波那契数列第二十项",
    ];

    #[test]
    fn stateful_plans_define_first_and_use_the_state_next() {
        let h = Heuristic::new("Compute fibonacci(7)", true, 5);
        assert_eq!(h.cells.len(), 2);
        assert!(h.cells[0].contains("def fibonacci"));
        assert!(!h.cells[0].contains("print(fibonacci"));
        assert_eq!(h.cells[1], "print(fibonacci(7))\n");
        let h = Heuristic::new("Compute fibonacci(7)", false, 5);
        assert_eq!(h.cells.len(), 1, "oneshot: nothing carries over");
        assert_eq!(h.plan().expect("plan").code, h.cells, "cached whole");
        let h = Heuristic::new("Compute fibonacci(7)", true, 1);
        assert_eq!(h.cells.len(), 1, "one step allowed");
        // One line: nothing to split.
        assert_eq!(Heuristic::new("print hello world", true, 5).cells.len(), 1);
    }

    #[test]
    fn stateful_cells_run_in_one_namespace_print_what_the_whole_program_prints() {
        // Each plan's cells, executed one after another in one namespace (as
        // the session driver does), print exactly what the whole program
        // prints in one process.
        let mut cases = Vec::new();
        let mut split = 0;
        for d in SAMPLES {
            let i = plan_for(d).unwrap_or_else(|| panic!("no plan for {d}"));
            let cells = i.cells(true);
            split += usize::from(cells.len() > 1);
            let lines = |s: &str| -> Vec<String> {
                s.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            assert_eq!(lines(&cells.concat()), lines(&i.code), "{d}");
            cases.push(serde_json::json!({"whole": i.code, "cells": cells}));
        }
        assert!(split >= SAMPLES.len() / 2, "only {split} plans split");
        let check = r#"
import contextlib, io, json, sys
for case in json.load(sys.stdin):
    whole = io.StringIO()
    with contextlib.redirect_stdout(whole):
        exec(compile(case["whole"], "<whole>", "exec"), {})
    stepped, ns = io.StringIO(), {}
    with contextlib.redirect_stdout(stepped):
        for cell in case["cells"]:
            exec(compile(cell, "<cell>", "exec"), ns)
    assert whole.getvalue() == stepped.getvalue(), (case, whole.getvalue(), stepped.getvalue())
print("ok")
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-I", "-c", check])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(serde_json::Value::Array(cases).to_string().as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("python3 ran");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
