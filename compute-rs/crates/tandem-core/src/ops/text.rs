//! `text.stats`: counts over UTF-8 text.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Serialize;
use unicode_segmentation::UnicodeSegmentation;

use crate::cancel::Ctx;
use crate::error::{Error, Result};
use crate::params::{ParamSpec, Params};
use crate::registry::{Op, Output};

/// Distinct terms counted for `top_terms`; terms first seen after this many
/// distinct ones are not counted, so memory stays bounded on adversarial
/// input (~100 B per term: ~100 MiB at most).
pub const MAX_DISTINCT_TERMS: usize = 1 << 20;

/// Output encoding of text.stats.
pub const ENCODING: &str = "tandem.text_stats.v1 (JSON)";

pub(crate) fn ops() -> Vec<Op> {
    vec![Op::json(
        "text.stats",
        "Statistics of UTF-8 text. Output: JSON {\"bytes\", \"chars\" (Unicode scalar values), \"lines\", \
         \"words\" (Unicode word boundaries, UAX #29), \"top_terms\": [{\"term\" (lower-cased word), \
         \"count\"}]} sorted by count, then term (only the first 1048576 distinct terms are counted).",
        ENCODING,
        vec![ParamSpec::int("top_k", "How many of the most frequent terms to list.", 10, 0, 1000)],
        stats,
    )]
}

#[derive(Serialize)]
struct Term {
    term: String,
    count: u64,
}

#[derive(Serialize)]
struct Stats {
    bytes: u64,
    chars: u64,
    lines: u64,
    words: u64,
    top_terms: Vec<Term>,
}

fn stats(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    let text = std::str::from_utf8(input).map_err(|e| {
        Error::corrupt(format!("text is not valid UTF-8 (first bad byte at offset {})", e.valid_up_to()))
    })?;
    let top_k = params.int("top_k") as usize;
    let chars = text.chars().count() as u64;
    // A line is a run of text ended by "\n" or by the end of a non-empty text.
    let newlines = text.bytes().filter(|&b| b == b'\n').count() as u64;
    let lines = newlines + u64::from(!text.is_empty() && !text.ends_with('\n'));
    let mut words = 0u64;
    let mut counts: HashMap<Cow<'_, str>, u64> = HashMap::new();
    for (i, w) in text.unicode_words().enumerate() {
        if i % 65536 == 0 {
            ctx.checkpoint()?;
        }
        words += 1;
        if top_k == 0 {
            continue;
        }
        // Borrow the word unless lower-casing changes it.
        let changes = w.chars().any(|c| {
            let mut lower = c.to_lowercase();
            !(lower.next() == Some(c) && lower.next().is_none())
        });
        let term = if changes { Cow::Owned(w.to_lowercase()) } else { Cow::Borrowed(w) };
        if let Some(c) = counts.get_mut(&term) {
            *c += 1;
        } else if counts.len() < MAX_DISTINCT_TERMS {
            counts.insert(term, 1);
        }
    }
    let mut terms: Vec<(Cow<'_, str>, u64)> = counts.into_iter().collect();
    terms.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    terms.truncate(top_k);
    Output::json(&Stats {
        bytes: input.len() as u64,
        chars,
        lines,
        words,
        top_terms: terms.into_iter().map(|(term, count)| Term { term: term.into_owned(), count }).collect(),
    })
}
