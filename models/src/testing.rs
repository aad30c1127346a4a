//! Tiny random-weight chat models for tests (this crate's and the app's): GGUF files written
//! through candle with full tokenizer metadata (byte-level BPE vocab, merges, control tokens) and
//! no tokenizer.json, so loading them runs the real GGUF loading and tokenizer-building code.
//! Not used at run time.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Family {
    Qwen2,
    Qwen3,
    /// `llama` architecture with ChatML tokens (SmolLM2).
    SmolLm,
    /// `llama` architecture with Llama-3 header tokens.
    Llama3,
}

pub const ALL: [Family; 4] = [Family::Qwen2, Family::Qwen3, Family::SmolLm, Family::Llama3];

pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = HIDDEN / HEADS;
pub const FF: usize = 128;
pub const LAYERS: usize = 2;
pub const CONTEXT: u32 = 256;

/// GPT-2's byte → printable-char map.
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        out[*b as usize] = char::from_u32(c).unwrap();
    }
    out
}

pub struct Vocab {
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
}

impl Vocab {
    pub fn id(&self, t: &str) -> u32 {
        self.tokens.iter().position(|x| x == t).unwrap() as u32
    }
}

/// 256 byte tokens (id = position in GPT-2's byte order, so id 0 is `!`), a few merges, then the
/// family's control tokens plus `<|custom_eos|>`, which only the GGUF eos id points to.
pub fn vocab(family: Family) -> Vocab {
    let chars = byte_chars();
    let mut order: Vec<u8> = (0..=255u8).collect();
    order.sort_by_key(|b| chars[*b as usize]);
    let mut tokens: Vec<String> = order
        .iter()
        .map(|b| chars[*b as usize].to_string())
        .collect();
    let mut types = vec![1; tokens.len()];
    let mut merges = Vec::new();
    for (a, b) in [
        ("h", "e"),
        ("Ġ", "t"),
        ("Ġt", "he"),
        ("i", "s"),
        ("Ġ", "c"),
        ("a", "p"),
        ("Ġc", "ap"),
        ("l", "l"),
        ("he", "ll"),
        ("o", "r"),
    ] {
        merges.push(format!("{a} {b}"));
        tokens.push(format!("{a}{b}"));
        types.push(1);
    }
    let specials: &[&str] = match family {
        Family::Llama3 => &[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        _ => &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    };
    for s in specials.iter().chain(&["<|custom_eos|>"]) {
        tokens.push(s.to_string());
        types.push(3);
    }
    Vocab {
        tokens,
        types,
        merges,
    }
}

/// How the weights are shaped.
#[derive(Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Random everywhere.
    Random,
    /// The given token always wins (layers zeroed, one huge logit row).
    AlwaysEmit(u32),
}

pub fn q8(t: Tensor) -> QTensor {
    QTensor::quantize(&t, GgmlDType::Q8_0).unwrap()
}
pub fn f32q(t: Tensor) -> QTensor {
    QTensor::quantize(&t, GgmlDType::F32).unwrap()
}

/// Writes a tiny model of `family` and returns its path and vocabulary.
pub fn write_model(
    dir: &Path,
    family: Family,
    behaviour: Behaviour,
    seed: u64,
) -> (PathBuf, Vocab) {
    write_model_as(dir, family, behaviour, seed, Quant::Q8)
}

/// Block types of a tiny model's matrices.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Quant {
    /// Q8_0 everywhere, hidden size [`hidden`].
    Q8,
    /// Laid out like a real Q4_K_M file: Q4_K matrices, Q6_K for the output and every other
    /// layer's `ffn_down`; hidden size 256 (K-quant blocks hold 256 values).
    KQuants,
}

/// [`write_model`] with the given block types.
pub fn write_model_as(
    dir: &Path,
    family: Family,
    behaviour: Behaviour,
    seed: u64,
    quant: Quant,
) -> (PathBuf, Vocab) {
    let (hidden, ff) = match quant {
        Quant::Q8 => (HIDDEN, FF),
        Quant::KQuants => (256, 512),
    };
    let head_dim = hidden / HEADS;
    let dev = Device::Cpu;
    let rng = std::cell::Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let v = vocab(family);
    let n_vocab = v.tokens.len();
    let arch = match family {
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        Family::SmolLm | Family::Llama3 => "llama",
    };
    let pre = match family {
        Family::Qwen2 | Family::Qwen3 => "qwen2",
        Family::SmolLm => "smollm",
        Family::Llama3 => "llama-bpe",
    };
    let bos = match family {
        Family::Llama3 => v.id("<|begin_of_text|>"),
        _ => v.id("<|endoftext|>"),
    };
    let eos = v.id("<|custom_eos|>");
    // Deterministic normal-ish values (xorshift + sum of uniforms), so files are reproducible.
    let randn = |shape: (usize, usize), std: f32| {
        let data: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| {
                let mut acc = 0f32;
                for _ in 0..4 {
                    let mut x = rng.get();
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    rng.set(x);
                    acc += (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                acc * std * 1.732
            })
            .collect();
        Tensor::from_vec(data, shape, &dev).unwrap()
    };
    let zero_layers = matches!(behaviour, Behaviour::AlwaysEmit(_));
    let quantize = |t: Tensor, k: GgmlDType| match quant {
        Quant::Q8 => q8(t),
        Quant::KQuants => QTensor::quantize(&t, k).unwrap(),
    };
    let wq = |shape: (usize, usize), k: GgmlDType| {
        if zero_layers {
            quantize(Tensor::zeros(shape, DType::F32, &dev).unwrap(), k)
        } else {
            quantize(randn(shape, 0.5), k)
        }
    };
    let w = |shape: (usize, usize)| wq(shape, GgmlDType::Q4K);
    let ones = |n: usize| f32q(Tensor::ones(n, DType::F32, &dev).unwrap());

    let mut embd = randn((n_vocab, hidden), 1.0);
    let mut out = randn((n_vocab, hidden), 0.5);
    if let Behaviour::AlwaysEmit(tok) = behaviour {
        // Every embedding has a large first coordinate; only `tok`'s output row reads it.
        let mut e = embd.to_vec2::<f32>().unwrap();
        for row in e.iter_mut() {
            row[0] = 10.0;
        }
        embd = Tensor::new(e, &dev).unwrap();
        let mut o = out.to_vec2::<f32>().unwrap();
        for (i, row) in o.iter_mut().enumerate() {
            row[0] = if i == tok as usize { 100.0 } else { 0.0 };
        }
        out = Tensor::new(o, &dev).unwrap();
    }
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), quantize(embd, GgmlDType::Q4K)),
        ("output.weight".into(), quantize(out, GgmlDType::Q6K)),
        ("output_norm.weight".into(), ones(hidden)),
    ];
    let kv = KV_HEADS * head_dim;
    for l in 0..LAYERS {
        let p = format!("blk.{l}");
        tensors.push((format!("{p}.attn_norm.weight"), ones(hidden)));
        tensors.push((format!("{p}.ffn_norm.weight"), ones(hidden)));
        tensors.push((format!("{p}.attn_q.weight"), w((hidden, hidden))));
        tensors.push((format!("{p}.attn_k.weight"), w((kv, hidden))));
        tensors.push((format!("{p}.attn_v.weight"), w((kv, hidden))));
        tensors.push((format!("{p}.attn_output.weight"), w((hidden, hidden))));
        tensors.push((format!("{p}.ffn_gate.weight"), w((ff, hidden))));
        tensors.push((format!("{p}.ffn_up.weight"), w((ff, hidden))));
        let down = if l % 2 == 0 {
            GgmlDType::Q6K
        } else {
            GgmlDType::Q4K
        };
        tensors.push((format!("{p}.ffn_down.weight"), wq((hidden, ff), down)));
        match family {
            Family::Qwen2 => {
                for (n, len) in [("q", hidden), ("k", kv), ("v", kv)] {
                    let b = if zero_layers {
                        Tensor::zeros(len, DType::F32, &dev).unwrap()
                    } else {
                        randn((1, len), 0.5).flatten_all().unwrap()
                    };
                    tensors.push((format!("{p}.attn_{n}.bias"), f32q(b)));
                }
            }
            Family::Qwen3 => {
                tensors.push((format!("{p}.attn_q_norm.weight"), ones(head_dim)));
                tensors.push((format!("{p}.attn_k_norm.weight"), ones(head_dim)));
            }
            _ => {}
        }
    }

    let s = |x: &str| Value::String(x.to_string());
    let u = |x: usize| Value::U32(x as u32);
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(arch)),
        ("general.name".into(), s(&format!("tiny-{family:?}"))),
        ("general.file_type".into(), Value::U32(7)),
        ("general.dtype".into(), Value::U32(0)),
        (format!("{arch}.context_length"), Value::U32(CONTEXT)),
        (format!("{arch}.embedding_length"), u(hidden)),
        (format!("{arch}.block_count"), u(LAYERS)),
        (format!("{arch}.feed_forward_length"), u(ff)),
        (format!("{arch}.attention.head_count"), u(HEADS)),
        (format!("{arch}.attention.head_count_kv"), u(KV_HEADS)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(10000.0)),
        (format!("{arch}.rope.dimension_count"), u(head_dim)),
        (format!("{arch}.attention.key_length"), u(head_dim)),
        (format!("{arch}.attention.value_length"), u(head_dim)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s(pre)),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(v.tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(v.types.iter().map(|t| Value::I32(*t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(v.merges.iter().map(|m| s(m)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)),
    ];
    let name = match quant {
        Quant::Q8 => format!("tiny-{family:?}-{seed}.gguf"),
        Quant::KQuants => format!("tiny-{family:?}-kquants-{seed}.gguf"),
    };
    let path = dir.join(name.to_lowercase());
    let mut file = std::fs::File::create(&path).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &md_refs, &t_refs).unwrap();
    (path, v)
}

/// This process's peak resident memory so far (Linux `VmHWM`), in MB; NaN where
/// `/proc/self/status` cannot be read. For benchmarks and examples that report memory against a
/// baseline measured in the same run.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Real GGUF chat models installed for the tests that use real weights, smallest first:
/// `$SANDRA_MODELS_DIR`, else `<repo>/.models` (`scripts/fetch-models.sh`). Returns the directory
/// looked in too, for the `skipped:` line of tests that find none.
pub fn installed_chat_models() -> (PathBuf, Vec<PathBuf>) {
    let dir = std::env::var_os("SANDRA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.models"));
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.len(), p)))
        .collect();
    found.sort();
    (dir, found.into_iter().map(|(_, p)| p).collect())
}

/// The decode kernels of `chat::qgemv` (for `benches/bench_qgemv.rs`): false when the block type
/// or the CPU is not theirs.
pub fn decode_matmul(
    dtype: GgmlDType,
    blocks: &[u8],
    mkn: (usize, usize, usize),
    lhs: &[f32],
    dst: &mut [f32],
) -> bool {
    crate::chat::qgemv::matmul(dtype, blocks, mkn, lhs, dst)
}

/// A Q4_K matrix re-laid by eights for the AVX2 kernel (`chat::qgemv::Q4kByEights`, for
/// `benches/bench_qgemv.rs`).
pub struct Q4kByEights(crate::chat::qgemv::Q4kByEights);

impl Q4kByEights {
    /// None where the kernel does not run here, or the blocks are not a Q4_K `[n, k]` matrix
    /// of whole groups of eight rows.
    pub fn new(blocks: &[u8], n: usize, k: usize) -> Option<Self> {
        crate::chat::qgemv::Q4kByEights::new(blocks, n, k).map(Self)
    }

    /// `dst = lhs @ w.T` for the `m` rows of `lhs`; false when the shapes do not fit.
    pub fn matmul(&self, mk: (usize, usize), lhs: &[f32], dst: &mut [f32]) -> bool {
        crate::chat::qgemv::matmul_by_eights(&self.0, mk, lhs, dst)
    }
}

/// The `[llm] cpu_prefill` mode a chat benchmark measures, as this machine resolves it: the
/// default (`auto`), or the one `BENCH_PREFILL=compact|repacked` names.
pub fn bench_cpu_prefill() -> crate::chat::CpuPrefill {
    use crate::chat::CpuPrefill;
    match std::env::var("BENCH_PREFILL").as_deref() {
        Ok("compact") => CpuPrefill::Compact,
        Ok("repacked") => CpuPrefill::Repacked,
        _ => CpuPrefill::Auto,
    }
    .resolve()
}

/// The AMX tile unit's costs on this machine (`chat::amx::tile_costs`, for
/// `benches/bench_machine.rs`): nanoseconds per 1 KB tile load, per bf16 tile product, and per
/// product in the prompt kernel's inner loop. None without AMX.
pub fn amx_tile_costs(reps: usize) -> Option<[f64; 3]> {
    crate::chat::amx::tile_costs(reps)
}

/// The AMX prompt kernels of `chat::amx` (for `benches/bench_qgemv.rs`): false when the block
/// type, the shape or the CPU is not theirs.
pub fn prompt_matmul(
    dtype: GgmlDType,
    blocks: &[u8],
    mkn: (usize, usize, usize),
    lhs: &[f32],
    dst: &mut [f32],
) -> bool {
    crate::chat::amx::matmul(dtype, blocks, mkn, lhs, dst)
}
