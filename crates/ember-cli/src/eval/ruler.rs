//! RULER-style synthetic long-context tasks (Hsieh et al. 2024,
//! arXiv:2404.06654; templates after NVIDIA/RULER's `synthetic/niah.py`,
//! `variable_tracking.py` and `common_words_extraction.py`): needles in a
//! haystack of repeated filler, asked for by key, variable-assignment
//! chains to follow, and the most frequent words of a long list. Everything is
//! generated from a seed, and the haystack is sized by a token counter, so a
//! task at a given length is the same text on every run and every server.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// RULER's "noise" haystack: one unit of repeated filler.
const FILLER: &str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly", "keen", "lucky",
    "mellow", "narrow", "odd", "proud", "quiet", "rapid", "silent", "tidy", "upper", "vivid", "wild", "young",
];
const NOUNS: &[&str] = &[
    "anchor", "badger", "candle", "dragon", "engine", "falcon", "garden", "harbor", "island", "jacket", "kettle",
    "lantern", "meadow", "needle", "orchard", "pepper", "quarry", "river", "saddle", "tunnel", "valley", "walrus",
    "yogurt", "zephyr",
];

/// What a needle's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Number,
    Word,
    Uuid,
}

impl ValueKind {
    /// The plural RULER's templates use ("special magic numbers").
    fn plural(self) -> &'static str {
        match self {
            Self::Number => "numbers",
            Self::Word => "words",
            Self::Uuid => "uuids",
        }
    }
}

/// One task family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One needle; the question asks for its value.
    NiahSingle,
    /// Four needles under different keys; the question asks for one.
    NiahMultiKey,
    /// Four values under one key; the question asks for all of them.
    NiahMultiValue,
    /// A chain of `VAR X = VAR Y` assignments from one number; the question
    /// asks for every variable that ends up holding it.
    VariableTracking,
    /// A numbered list in which 10 words appear `COMMON_REPEATS` times and
    /// the rest `RARE_REPEATS` times; the question asks for the 10.
    CommonWords,
}

/// How often each common and each rare word appears in `CommonWords`.
/// RULER repeats common words 30 times; 10 keeps the task inside a
/// 1K-token context, and the list grows with rare words only.
const COMMON_REPEATS: usize = 10;
const RARE_REPEATS: usize = 3;
const COMMON_WORDS: usize = 10;

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Self::NiahSingle => "niah_single",
            Self::NiahMultiKey => "niah_multikey",
            Self::NiahMultiValue => "niah_multivalue",
            Self::VariableTracking => "vt",
            Self::CommonWords => "cwe",
        }
    }
}

/// A generated prompt and the strings a right answer contains.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub prompt: String,
    pub answers: Vec<String>,
    /// Where the (first) needle sits in the haystack, 0 to 1.
    pub depth: f64,
}

/// The plan of one sample, fixed before the haystack is sized.
#[derive(Debug, Clone)]
pub struct Plan {
    task: Task,
    /// Sentences placed in the haystack, at relative depths.
    needles: Vec<(f64, String)>,
    question: String,
    answers: Vec<String>,
    important: bool,
    /// Seeds the rare words and the order of a `CommonWords` list.
    list_seed: u64,
}

impl Plan {
    /// Sample `index` of `task`: its value kind, keys, values and depth come
    /// from `seed` and `index` only. Single-needle depths spread evenly over
    /// the context as `index` grows. `important` wraps each needle in
    /// `[IMPORTANT]` ... `[/IMPORTANT]`.
    pub fn new(task: Task, seed: u64, index: usize, important: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ task as u64);
        let kind = [ValueKind::Number, ValueKind::Word, ValueKind::Uuid][index % 3];
        // Golden-ratio steps spread the depths over (0, 1) for any count.
        let depth = (0.5 + index as f64 * 0.618_033_988_75).fract() * 0.9 + 0.05;
        let needle = |key: &str, value: &str| format!("One of the special magic {} for {key} is: {value}.", kind.plural());
        let (needles, question, answers) = match task {
            Task::NiahSingle => {
                let (key, value) = (word_key(&mut rng), value(&mut rng, kind));
                let question = question_for(kind, &key);
                (vec![(depth, needle(&key, &value))], question, vec![value])
            }
            Task::NiahMultiKey => {
                let keys: Vec<String> = distinct(&mut rng, 4, word_key);
                let values: Vec<String> = distinct(&mut rng, 4, |r| value(r, kind));
                let needles = keys
                    .iter()
                    .zip(&values)
                    .enumerate()
                    .map(|(i, (k, v))| (if i == 0 { depth } else { rng.random_range(0.05..0.95) }, needle(k, v)))
                    .collect();
                (needles, question_for(kind, &keys[0]), vec![values[0].clone()])
            }
            Task::NiahMultiValue => {
                let key = word_key(&mut rng);
                let values: Vec<String> = distinct(&mut rng, 4, |r| value(r, kind));
                let needles = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (if i == 0 { depth } else { rng.random_range(0.05..0.95) }, needle(&key, v)))
                    .collect();
                (needles, question_for(kind, &key), values)
            }
            Task::VariableTracking => {
                let names: Vec<String> = distinct(&mut rng, 5, |r| {
                    (0..5).map(|_| char::from(b'A' + r.random_range(0..26u8))).collect()
                });
                let number = rng.random_range(10_000..100_000).to_string();
                let mut needles = vec![(depth.min(0.5), format!("VAR {} = {number}.", names[0]))];
                for pair in names.windows(2) {
                    let at = needles.last().map_or(0.0, |n| n.0) + rng.random_range(0.02..0.1);
                    needles.push((at.min(0.95), format!("VAR {} = VAR {}.", pair[1], pair[0])));
                }
                let question = format!(
                    "Find all variables that are assigned the value {number} in the text above. \
                     Answer with the variable names only."
                );
                (needles, question, names)
            }
            Task::CommonWords => {
                let common = distinct(&mut rng, COMMON_WORDS, made_up_word);
                let question = format!(
                    "What are the {COMMON_WORDS} most common words in the above list? Answer with the words only."
                );
                (Vec::new(), question, common)
            }
        };
        Self {
            task,
            needles,
            question,
            answers,
            important,
            list_seed: rng.random(),
        }
    }

    /// The numbered word list of a `CommonWords` sample with `rare` rare words.
    fn word_list(&self, rare: usize) -> String {
        let mut rng = StdRng::seed_from_u64(self.list_seed);
        let mut words: Vec<String> = Vec::new();
        for word in &self.answers {
            words.extend(std::iter::repeat_n(word.clone(), COMMON_REPEATS));
        }
        let mut seen: std::collections::HashSet<String> = self.answers.iter().cloned().collect();
        while seen.len() < self.answers.len() + rare {
            let word = made_up_word(&mut rng);
            if seen.insert(word.clone()) {
                words.extend(std::iter::repeat_n(word, RARE_REPEATS));
            }
        }
        // Fisher-Yates with the sample's own generator: the same list every run.
        for i in (1..words.len()).rev() {
            words.swap(i, rng.random_range(0..=i));
        }
        words.iter().enumerate().map(|(i, w)| format!("{}. {w}", i + 1)).collect::<Vec<_>>().join(" ")
    }

    /// The sample with `units` filler units around the needles (rare words,
    /// for `CommonWords`).
    pub fn render(&self, units: usize) -> Sample {
        if self.task == Task::CommonWords {
            let intro = "Below is a numbered list of words. In these words, some appear more often than others. \
                         Memorize the ones that appear most often.";
            return Sample {
                prompt: format!("{intro}\n{}\n{}", self.word_list(units), self.question),
                answers: self.answers.clone(),
                depth: 0.0,
            };
        }
        let mut placed: Vec<(usize, String)> = self
            .needles
            .iter()
            .map(|(depth, text)| ((depth * units as f64).round() as usize, text.clone()))
            .collect();
        // Stable by position, so a chain keeps its order at one slot.
        placed.sort_by_key(|(at, _)| *at);
        let mut haystack = String::new();
        let mut next = placed.iter().peekable();
        for unit in 0..=units {
            while let Some((_, text)) = next.next_if(|(at, _)| *at <= unit) {
                if self.important {
                    haystack.push_str(&format!("[IMPORTANT]{text}[/IMPORTANT] "));
                } else {
                    haystack.push_str(text);
                    haystack.push(' ');
                }
            }
            if unit < units {
                haystack.push_str(FILLER);
                haystack.push(' ');
            }
        }
        let intro = match self.task {
            Task::VariableTracking => {
                "Memorize and track the chain(s) of variable assignment hidden in the following text.".to_owned()
            }
            _ => "Some special magic values are hidden within the following text. Make sure to memorize them. \
                  I will quiz you about them afterwards."
                .to_owned(),
        };
        Sample {
            prompt: format!("{intro}\n{}\n{}", haystack.trim_end(), self.question),
            answers: self.answers.clone(),
            depth: self.needles.first().map_or(0.0, |n| n.0),
        }
    }

    /// The largest haystack whose prompt `count` says fits in `budget`
    /// tokens (binary search; `count` is the server's tokenizer).
    pub fn fit<E>(&self, budget: usize, mut count: impl FnMut(&str) -> Result<usize, E>) -> Result<Sample, E> {
        let (mut low, mut high) = (0usize, 1usize);
        while count(&self.render(high).prompt)? <= budget {
            low = high;
            high *= 2;
        }
        // Invariant: `low` fits, `high` does not.
        while high - low > 1 {
            let mid = (low + high) / 2;
            if count(&self.render(mid).prompt)? <= budget {
                low = mid;
            } else {
                high = mid;
            }
        }
        Ok(self.render(low))
    }
}

/// A pronounceable nonsense word of three syllables ("tamoki"): one
/// tokenizer-neutral vocabulary for `CommonWords`, unlike any real word's
/// frequency in the model's training data.
fn made_up_word(rng: &mut StdRng) -> String {
    const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    (0..3)
        .flat_map(|_| {
            [CONSONANTS[rng.random_range(0..CONSONANTS.len())], VOWELS[rng.random_range(0..VOWELS.len())]]
        })
        .map(char::from)
        .collect()
}

fn question_for(kind: ValueKind, key: &str) -> String {
    format!(
        "What are all the special magic {} for {key} mentioned in the provided text? Answer with the values only.",
        kind.plural()
    )
}

fn word_key(rng: &mut StdRng) -> String {
    format!("{}-{}", ADJECTIVES[rng.random_range(0..ADJECTIVES.len())], NOUNS[rng.random_range(0..NOUNS.len())])
}

fn value(rng: &mut StdRng, kind: ValueKind) -> String {
    match kind {
        ValueKind::Number => rng.random_range(1_000_000..10_000_000).to_string(),
        ValueKind::Word => word_key(rng),
        ValueKind::Uuid => {
            let hex: Vec<String> = [8, 4, 4, 4, 12]
                .iter()
                .map(|&n| (0..n).map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)])).collect())
                .collect();
            hex.join("-")
        }
    }
}

/// `n` different values from `make`.
fn distinct(rng: &mut StdRng, n: usize, mut make: impl FnMut(&mut StdRng) -> String) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(n);
    while out.len() < n {
        let v = make(rng);
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// RULER's `string_match_all`: the share of the answers found in the
/// prediction, case-insensitively.
pub fn string_match_all(prediction: &str, answers: &[String]) -> f64 {
    if answers.is_empty() {
        return 0.0;
    }
    let prediction = prediction.to_lowercase();
    let found = answers.iter().filter(|a| prediction.contains(&a.to_lowercase())).count();
    found as f64 / answers.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASKS: [Task; 5] =
        [Task::NiahSingle, Task::NiahMultiKey, Task::NiahMultiValue, Task::VariableTracking, Task::CommonWords];

    #[test]
    fn samples_are_deterministic_and_hold_their_answers() {
        for task in TASKS {
            for index in 0..6 {
                let a = Plan::new(task, 7, index, false).render(40);
                let b = Plan::new(task, 7, index, false).render(40);
                assert_eq!(a, b, "{task:?}");
                assert_ne!(a, Plan::new(task, 8, index, false).render(40), "{task:?}: the seed matters");
                for answer in &a.answers {
                    assert!(a.prompt.contains(answer.as_str()), "{task:?}: {answer}");
                }
                assert_eq!(string_match_all(&a.prompt, &a.answers), 1.0);
            }
        }
    }

    #[test]
    fn needles_sit_at_their_depth_and_can_be_marked() {
        let plan = Plan::new(Task::NiahSingle, 1, 0, false);
        let sample = plan.render(100);
        let needle_at = sample.prompt.find("One of the special magic").unwrap_or(0) as f64;
        let haystack = sample.prompt.len() as f64;
        assert!((needle_at / haystack - sample.depth).abs() < 0.1, "{} vs {}", needle_at / haystack, sample.depth);
        let marked = Plan::new(Task::NiahSingle, 1, 0, true).render(100);
        assert_eq!(marked.prompt.matches("[IMPORTANT]").count(), 1);
        assert_eq!(marked.prompt.replace("[IMPORTANT]", "").replace("[/IMPORTANT]", ""), sample.prompt);
    }

    #[test]
    fn fit_takes_the_largest_haystack_under_the_budget() {
        let plan = Plan::new(Task::NiahMultiValue, 3, 2, false);
        let words = |text: &str| -> Result<usize, ()> { Ok(text.split_whitespace().count()) };
        let sample = plan.fit(1000, words).unwrap_or_else(|()| plan.render(0));
        let n = words(&sample.prompt).unwrap_or(0);
        assert!(n <= 1000 && n > 1000 - 20, "{n} words");
        // A budget below the bare question gives no filler at all.
        let tiny = plan.fit(5, words).unwrap_or_else(|()| plan.render(1));
        assert_eq!(tiny, plan.render(0));
    }

    #[test]
    fn string_match_all_counts_each_answer() {
        let answers = vec!["1234567".to_owned(), "Brave-Falcon".to_owned()];
        assert_eq!(string_match_all("the values are 1234567 and brave-falcon", &answers), 1.0);
        assert_eq!(string_match_all("1234567", &answers), 0.5);
        assert_eq!(string_match_all("nothing", &answers), 0.0);
    }

    #[test]
    fn common_words_appear_most_often() {
        let sample = Plan::new(Task::CommonWords, 5, 1, false).render(40);
        let count = |word: &str| sample.prompt.matches(&format!(". {word} ")).count() + usize::from(sample.prompt.contains(&format!(". {word}\n")));
        assert_eq!(sample.answers.len(), COMMON_WORDS);
        for word in &sample.answers {
            assert_eq!(count(word), COMMON_REPEATS, "{word}");
        }
        assert!(sample.prompt.contains(&format!("{}. ", COMMON_WORDS * COMMON_REPEATS + 40 * RARE_REPEATS)));
    }
}
