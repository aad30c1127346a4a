//! The decode-step matrix products on the default model's real tensors: what a step costs for
//! one row (one conversation) and for eight (a batched step), with candle's block dot products,
//! candle's repacked tiles, and Sandra's kernels (`chat/qgemv.rs`), all in the same run.
//!
//! Each `qgemv` line repeats one matrix, which then stays in cache; a decode step reads every
//! matrix once from memory. The `step` lines time that: every layer's matrices of one block
//! type, one pass per round, with Sandra's kernels, one row and eight, in rounds alternating
//! so that a change in the machine's speed falls on both. A kernel can win the first and lose
//! the second: a 16-row Q4_K tile built on gathers took 8 rows of `ffn_gate` in 0.66–0.81 ms
//! against 1.13 in cache, but every Q4_K matrix of a step, one row, from memory, in 43–69 ms
//! against 31–48 (three runs of five rounds, alternating).
//!
//!   cargo bench -p sandra-models --bench bench_qgemv -- MODEL.gguf
//!
//! Under `cargo test` (no `--bench` argument) it does nothing.

use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ6K, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Device, Module, Tensor};

/// Rows of a typical new message's prompt chunk (a short question after the shared system
/// prompt).
const PROMPT: usize = 40;
/// Eight such questions read together (`forward_many` reads every new position of every
/// conversation as one product).
const PROMPTS: usize = 320;

fn blocks_as<T: GgmlType>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    (0..bytes.len() / size)
        // SAFETY: the bytes are a QTensor's blocks of type T; read_unaligned copes with any
        // alignment.
        .map(|i| unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(i * size).cast::<T>()) })
        .collect()
}

/// Median milliseconds of `reps` calls.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[reps / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "bench_qgemv: run with `cargo bench -p sandra-models --bench bench_qgemv -- MODEL`"
        );
        return;
    }
    let Some(model) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: cargo bench -p sandra-models --bench bench_qgemv -- MODEL.gguf");
        std::process::exit(2);
    };
    let dev = Device::Cpu;
    let mut file = std::fs::File::open(model).expect("model file");
    let ct = Content::read(&mut file).expect("GGUF");
    println!("threads\t{}", candle_core::utils::get_num_threads());
    for name in [
        "blk.0.ffn_gate.weight",
        "blk.0.ffn_down.weight",
        "blk.1.ffn_down.weight",
        "output.weight",
    ] {
        let Ok(q) = ct.tensor(&mut file, name, &dev) else {
            continue;
        };
        let dtype = q.dtype();
        let (n, k) = q.shape().dims2().unwrap();
        let bytes = q.data().unwrap().to_vec();
        let reps = if n > 100_000 { 7 } else { 31 };
        let x8 = Tensor::randn(0f32, 1.0, (PROMPTS, k), &dev).unwrap();
        let x8v: Vec<f32> = x8.flatten_all().unwrap().to_vec1().unwrap();
        let mut dst = vec![0f32; PROMPTS * n];
        // The block conversion is outside the timed region: convert once.
        let q4: Vec<BlockQ4K> = if dtype == GgmlDType::Q4K {
            blocks_as(&bytes)
        } else {
            vec![]
        };
        let q6: Vec<BlockQ6K> = if dtype == GgmlDType::Q6K {
            blocks_as(&bytes)
        } else {
            vec![]
        };
        let dots = |m: usize, dst: &mut [f32]| {
            if dtype == GgmlDType::Q4K {
                k_quants::matmul((m, k, n), &x8v[..m * k], &q4, dst).unwrap()
            } else {
                k_quants::matmul((m, k, n), &x8v[..m * k], &q6, dst).unwrap()
            }
        };
        let ours = |m: usize, dst: &mut [f32]| {
            assert!(sandra_models::testing::decode_matmul(
                dtype,
                &bytes,
                (m, k, n),
                &x8v[..m * k],
                dst
            ))
        };
        let amx = |m: usize, dst: &mut [f32]| {
            sandra_models::testing::prompt_matmul(dtype, &bytes, (m, k, n), &x8v[..m * k], dst)
        };
        let tiles = QMatMul::from_arc(Arc::new(q)).unwrap();
        let x1 = x8.narrow(0, 0, 1).unwrap();
        let dots1 = time(reps, || dots(1, &mut dst));
        let ours1 = time(reps, || ours(1, &mut dst));
        let tiles1 = time(reps, || drop(tiles.forward(&x1).unwrap()));
        let dots8 = time(reps, || dots(8, &mut dst));
        let ours8 = time(reps, || ours(8, &mut dst));
        let tiles8 = time(reps, || {
            drop(tiles.forward(&x8.narrow(0, 0, 8).unwrap()).unwrap())
        });
        let oursp = time(reps, || ours(PROMPT, &mut dst));
        let tilesp = time(reps, || {
            drop(tiles.forward(&x8.narrow(0, 0, PROMPT).unwrap()).unwrap())
        });
        // The AMX prompt kernel (`chat/amx.rs`), where the CPU has it, at its smallest row
        // count, one question and eight, against candle's kernels at the same counts.
        let reps_big = reps.div_ceil(3);
        let amx_ok = amx(16, &mut dst);
        let (amx16, amxp, amx8p) = if amx_ok {
            (
                time(reps, || assert!(amx(16, &mut dst))),
                time(reps, || assert!(amx(PROMPT, &mut dst))),
                time(reps_big, || assert!(amx(PROMPTS, &mut dst))),
            )
        } else {
            (f64::NAN, f64::NAN, f64::NAN)
        };
        let tiles16 = time(reps, || {
            drop(tiles.forward(&x8.narrow(0, 0, 16).unwrap()).unwrap())
        });
        let tiles8p = time(reps_big, || drop(tiles.forward(&x8).unwrap()));
        // Q4_K re-laid by eights (the AVX2 kernel), where it runs.
        let eights = sandra_models::testing::Q4kByEights::new(&bytes, n, k)
            .filter(|_| dtype == GgmlDType::Q4K);
        let [e1, e8, ep, e8p] = match &eights {
            Some(e) => {
                let mut run = |m: usize, reps: usize| {
                    time(reps, || assert!(e.matmul((m, k), &x8v[..m * k], &mut dst)))
                };
                [
                    run(1, reps),
                    run(8, reps),
                    run(PROMPT, reps),
                    run(PROMPTS, reps_big),
                ]
            }
            None => [f64::NAN; 4],
        };
        println!(
            "eights\t{name}\t{dtype:?}\t[{n}x{k}]\tms: one row {e1:.2}\teight rows {e8:.2}\t\
             {PROMPT} rows {ep:.2}\t{PROMPTS} rows {e8p:.2}"
        );
        println!(
            "qgemv\t{name}\t{dtype:?}\t[{n}x{k}]\tone row ms: candle_dots={dots1:.2} candle_tiles={tiles1:.2} sandra={ours1:.2}\t\
             eight rows ms: candle_dots={dots8:.2} candle_tiles={tiles8:.2} sandra={ours8:.2}\t\
             {PROMPT} rows (a prompt chunk) ms: candle_tiles={tilesp:.2} sandra={oursp:.2} amx={amxp:.2}\t\
             16 rows ms: candle_tiles={tiles16:.2} amx={amx16:.2}\t\
             {PROMPTS} rows ms: candle_tiles={tiles8p:.2} amx={amx8p:.2}\t\
             sandra_8_vs_1={:.2} sandra_1_vs_candle_dots_1={:.2}",
            ours8 / ours1,
            ours1 / dots1
        );
    }
    step_from_memory(&ct, &mut file, &dev);
}

/// The `step` lines (see the top): every `blk.*` matrix of each block type, in layer order.
/// Each round reads the Q4_K set (596 MiB for the default model) between two readings of the
/// Q6_K one (155 MiB, under the 300 MiB L3 this VM lists), so neither is still cached.
fn step_from_memory(ct: &Content, file: &mut std::fs::File, dev: &Device) {
    type Mats = Vec<(String, usize, usize, Vec<u8>)>;
    let mut sets: Vec<(GgmlDType, Mats)> = Vec::new();
    for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
        let mut mats = Vec::new();
        for (name, info) in &ct.tensor_infos {
            if name.starts_with("blk.") && info.ggml_dtype == dtype && info.shape.dims().len() == 2
            {
                let q = ct.tensor(file, name, dev).expect("tensor");
                let (n, k) = q.shape().dims2().unwrap();
                mats.push((name.clone(), n, k, q.data().unwrap().to_vec()));
            }
        }
        // Layer order, as a step reads them (the file's order may differ).
        mats.sort_by_key(|(name, ..)| {
            let layer: usize = name
                .split('.')
                .nth(1)
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            (layer, name.clone())
        });
        if !mats.is_empty() {
            sets.push((dtype, mats));
        }
    }
    let all = sets.iter().flat_map(|(_, m)| m);
    let kmax = all.clone().map(|m| m.2).max().unwrap_or(0);
    let nmax = all.map(|m| m.1).max().unwrap_or(0);
    let x: Vec<f32> = Tensor::randn(0f32, 1.0, (8, kmax.max(1)), dev)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut dst = vec![0f32; 8 * nmax];
    // ms[set][0 for one row, 1 for eight]
    let mut ms = vec![[Vec::new(), Vec::new()]; sets.len()];
    for _round in 0..5 {
        for (i, m) in [1usize, 8].into_iter().enumerate() {
            for ((dtype, mats), ms) in sets.iter().zip(&mut ms) {
                let t = Instant::now();
                for (_, n, k, b) in mats {
                    assert!(sandra_models::testing::decode_matmul(
                        *dtype,
                        b,
                        (m, *k, *n),
                        &x[..m * k],
                        &mut dst
                    ));
                }
                ms[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    // The Q4_K set again, re-laid by eights (the AVX2 kernel), where it runs.
    let eights: Vec<_> = sets
        .iter()
        .filter(|(dtype, _)| *dtype == GgmlDType::Q4K)
        .flat_map(|(_, mats)| mats)
        .map_while(|(_, n, k, b)| Some((*k, sandra_models::testing::Q4kByEights::new(b, *n, *k)?)))
        .collect();
    let mut ems = [Vec::new(), Vec::new()];
    if !eights.is_empty() {
        for _round in 0..5 {
            for (i, m) in [1usize, 8].into_iter().enumerate() {
                let t = Instant::now();
                for (k, e) in &eights {
                    assert!(e.matmul((m, *k), &x[..m * k], &mut dst));
                }
                ems[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let show = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.1}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for ((dtype, mats), ms) in sets.iter().zip(&ms) {
        let bytes: usize = mats.iter().map(|m| m.3.len()).sum();
        println!(
            "step\t{dtype:?}\t{} matrices, {} MiB, from memory\tsandra ms, five rounds: \
             one row {}\teight rows {}",
            mats.len(),
            bytes >> 20,
            show(&ms[0]),
            show(&ms[1])
        );
    }
    if !eights.is_empty() {
        println!(
            "step\tQ4K by eights\t{} matrices, from memory\tsandra ms, five rounds: one row {}\t\
             eight rows {}",
            eights.len(),
            show(&ems[0]),
            show(&ems[1])
        );
    }
}
