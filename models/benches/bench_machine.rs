//! What this machine allows, so the chat model's figures can be read against it:
//!
//! - **memory read bandwidth**, one thread and all model threads, over 1 GiB (far past any cache);
//! - with a GGUF path, the **weight bytes a decode step reads** (every matrix once; the token
//!   embedding only where the output layer is tied to it) and so the ceiling on single-stream
//!   generation: bandwidth / bytes per token;
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
