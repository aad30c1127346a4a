//! What this machine allows, so the chat model's figures can be read against it:
//!
//! - **memory read bandwidth**, one thread and all model threads, over 1 GiB (far past any cache);
//! - with a GGUF path, the **weight bytes a decode step reads** (every matrix once; the token
//!   embedding only where the output layer is tied to it) and so the ceiling on single-stream
//!   generation: bandwidth / bytes per token;
//! - the **int8 multiply peak**, one thread and all model threads: how many u8×i8 products per
//!   second the widest integer dot-product instruction gives when nothing else is in the way
//!   (AVX2's `vpmaddubsw`, 32 products; with AVX-512 VNNI `vpdpbusd`, 64). The quantized matmuls
//!   of a decode step are built on these, so with a GGUF path this also gives the **ceiling on
//!   aggregate generation at any batch size**: peak / products per token. Batching saves weight
//!   reads, never multiplies, so once a batched step is compute-bound this is where it stops;
//! - on CPUs with AMX, what the **tile unit** costs per instruction (`chat/amx.rs`'s prompt kernel
//!   loads one tile per product, so the slower of a load and a product bounds it).
//!
//!   cargo bench -p sandra-models --bench bench_machine -- [MODEL.gguf]
//!
//! Under `cargo test` (no `--bench` argument) it does nothing.

use std::time::Instant;

use candle_core::quantized::gguf_file::Content;

/// Best GB/s of three passes summing `data` split over `threads` threads.
fn read_bandwidth(data: &[u64], threads: usize) -> f64 {
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let parts: Vec<_> = data
                .chunks(data.len().div_ceil(threads))
                .map(|part| {
                    s.spawn(move || {
                        // Eight lanes, so the compiler keeps the loop vectorised and memory-bound.
                        let mut acc = [0u64; 8];
                        for c in part.chunks_exact(8) {
                            for (a, v) in acc.iter_mut().zip(c) {
                                *a = a.wrapping_add(*v);
                            }
                        }
                        acc.iter().fold(0u64, |x, y| x.wrapping_add(*y))
                    })
                })
                .collect();
            parts
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.max(std::mem::size_of_val(data) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// Bytes of weights one decode step reads: every tensor but the token embedding, which counts
/// only when there is no separate output matrix (tied embeddings: the output layer reads it all).
fn bytes_per_token(ct: &Content) -> usize {
    let tied = !ct.tensor_infos.contains_key("output.weight");
    ct.tensor_infos
        .iter()
        .filter(|(name, _)| tied || name.as_str() != "token_embd.weight")
        .map(|(_, t)| t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size())
        .sum()
}

/// Multiplies a decode step does per token: one per weight of every matrix (rank-2 tensor), the
/// token embedding counted only when tied (a lookup otherwise, not a product).
fn products_per_token(ct: &Content) -> usize {
    let tied = !ct.tensor_infos.contains_key("output.weight");
    ct.tensor_infos
        .iter()
        .filter(|(name, t)| t.shape.rank() == 2 && (tied || name.as_str() != "token_embd.weight"))
        .map(|(_, t)| t.shape.elem_count())
        .sum()
}

/// The int8 dot-product instruction [`int8_peak`] times on this CPU.
#[derive(Clone, Copy)]
struct Int8Kind {
    name: &'static str,
    products: f64,
    /// AVX-512 F and VNNI are present (else AVX2 is).
    vnni: bool,
}

/// `None` without AVX2.
fn int8_kind() -> Option<Int8Kind> {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni") {
            return Some(Int8Kind {
                name: "vpdpbusd zmm (AVX-512 VNNI)",
                products: 64.0,
                vnni: true,
            });
        }
        if is_x86_feature_detected!("avx2") {
            return Some(Int8Kind {
                name: "vpmaddubsw ymm (AVX2)",
                products: 32.0,
                vnni: false,
            });
        }
    }
    None
}

/// Best products/s of three passes, `rounds` rounds per thread on `threads` threads, of twelve
/// independent chains of the instruction [`int8_kind`] names: twelve chains cover its latency
/// times its throughput on current cores (about 4-5 cycles × 2 per cycle), so the figure is the
/// issue rate, not the latency.
fn int8_peak(kind: Int8Kind, threads: usize, rounds: u64) -> f64 {
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(move || {
                    std::hint::black_box(int8_chains(kind, std::hint::black_box(rounds)))
                });
            }
        });
        let products = (threads as u64 * rounds * 12) as f64 * kind.products;
        best = best.max(products / t.elapsed().as_secs_f64());
    }
    best
}

#[cfg(target_arch = "x86_64")]
fn int8_chains(kind: Int8Kind, rounds: u64) -> i32 {
    // SAFETY: an `Int8Kind` comes only from `int8_kind`, which found AVX-512 F and VNNI where
    // `vnni` is set and AVX2 otherwise.
    unsafe {
        if kind.vnni {
            chains_vnni(rounds)
        } else {
            chains_avx2(rounds)
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn int8_chains(_kind: Int8Kind, _rounds: u64) -> i32 {
    0
}

/// One `vpmaddubsw` per chain per round; each chain feeds its own result back as the next
/// unsigned operand, so the compiler can neither hoist nor fold the work.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn chains_avx2(rounds: u64) -> i32 {
    use std::arch::x86_64::*;
    let w = _mm256_set1_epi8(std::hint::black_box(3));
    let mut acc = [_mm256_set1_epi8(1); 12];
    for _ in 0..rounds {
        for a in acc.iter_mut() {
            *a = _mm256_maddubs_epi16(*a, w);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm256_setzero_si256(), |x, y| _mm256_add_epi16(x, *y));
    _mm256_extract_epi32::<0>(sum)
}

/// One `vpdpbusd` per chain per round, accumulating into its own register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
fn chains_vnni(rounds: u64) -> i32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_epi8(std::hint::black_box(1));
    let w = _mm512_set1_epi8(std::hint::black_box(3));
    let mut acc = [_mm512_setzero_si512(); 12];
    for _ in 0..rounds {
        for c in acc.iter_mut() {
            *c = _mm512_dpbusd_epi32(*c, a, w);
        }
    }
    let sum = acc
        .iter()
        .fold(_mm512_setzero_si512(), |x, y| _mm512_add_epi32(x, *y));
    _mm512_reduce_add_epi32(sum)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("bench_machine: run with `cargo bench -p sandra-models --bench bench_machine`");
        return;
    }
    let threads = candle_core::utils::get_num_threads();
    // 1 GiB, written first so every page is real.
    let data = vec![1u64; 1 << 27];
    let one = read_bandwidth(&data, 1);
    let all = read_bandwidth(&data, threads);
    drop(data);
    println!("memory\tread GB/s: 1 thread {one:.1}, {threads} threads {all:.1}");

    // 20 million rounds of twelve instructions: a fifth of a second per pass on a first-generation
    // EPYC core, long enough to swamp thread start-up.
    let int8 = int8_kind().map(|kind| {
        let one = int8_peak(kind, 1, 20_000_000);
        let all = int8_peak(kind, threads, 20_000_000);
        println!(
            "int8\t{}: G products/s: 1 thread {:.1}, {threads} threads {:.1}",
            kind.name,
            one / 1e9,
            all / 1e9
        );
        all
    });
    if int8.is_none() {
        println!("int8\tno AVX2 on this CPU: not measured");
    }

    if let Some(model) = args.iter().find(|a| !a.starts_with("--")) {
        let mut file = std::fs::File::open(model).expect("model file");
        let ct = Content::read(&mut file).expect("GGUF");
        let bytes = bytes_per_token(&ct);
        println!(
            "model\t{model}\tweight bytes read per decoded token: {:.0} MB\t\
             single-stream ceiling at {threads} threads: {:.1} tok/s",
            bytes as f64 / 1e6,
            all * 1e9 / bytes as f64
        );
        if let Some(peak) = int8 {
            let products = products_per_token(&ct);
            println!(
                "model\t{model}\tproducts per decoded token: {:.2} G\t\
                 aggregate ceiling at the int8 peak, any batch: {:.1} tok/s",
                products as f64 / 1e9,
                peak / products as f64
            );
        }
    }

    // Median of five timings of 200,000 rounds each.
    let mut runs: Vec<[f64; 3]> = (0..5)
        .filter_map(|_| sandra_models::testing::amx_tile_costs(200_000))
        .collect();
    if runs.is_empty() {
        println!("amx\tnot available on this CPU");
        return;
    }
    let median = |i: usize, runs: &mut Vec<[f64; 3]>| {
        runs.sort_by(|a, b| a[i].total_cmp(&b[i]));
        runs[runs.len() / 2][i]
    };
    let (load, product, step) = (
        median(0, &mut runs),
        median(1, &mut runs),
        median(2, &mut runs),
    );
    println!(
        "amx\tns per instruction: 1 KB tile load from L1 {load:.1}, bf16 tile product {product:.1}, \
         prompt kernel's inner loop per product {step:.1}"
    );
}
