//! The vulkan class's shader validator and rewriter
//! (`coproc_vulkan::shader::compile`, what `ShaderPrep` runs on the
//! loading thread; no Vulkan device needed): SPIR-V or WGSL from a domain,
//! with or without specialization values ahead of it
//! (`coproc_proto::shader`), parsed, validated, specialized, reflected and
//! written out again. What it
//! accepts must satisfy what pipeline creation relies on, and the SPIR-V it
//! writes must itself be accepted. A panic inside naga is contained by
//! `compile` and counts as a refusal.

#![no_main]

use coproc_proto::gpu::{MAX_BINDING, MAX_GROUPS, PUSH_WORDS};
use coproc_vulkan::shader::{
    compile, PipelineSpec, ShaderFeatures, ShaderLimits, SubgroupOperationSet, SPIRV_MAGIC,
};
use libfuzzer_sys::fuzz_target;

/// lavapipe's limits, and every optional feature on (the most the
/// compiler is asked to accept).
const LIMITS: ShaderLimits = ShaderLimits {
    max_invocations: 1024,
    max_size: [1024, 1024, 64],
    max_groups: 8,
    max_storage_buffers: 1_000_000,
    max_uniform_buffers: 1_000_000,
    max_uniform_bytes: 65536,
    max_workgroup_bytes: 32768,
    features: ShaderFeatures {
        f16: true,
        f64: true,
        i64: true,
        i64_atomics: true,
        i16: true,
        subgroup_ops: SubgroupOperationSet::all(),
        subgroup_size: 8,
    },
    robust_buffers: false,
    robust_images: true,
    max_images: 1_000_000,
    max_samplers: 1_000_000,
};

fn check(specs: &[PipelineSpec]) {
    assert!(!specs.is_empty());
    for s in specs {
        assert_eq!(s.spirv.first(), Some(&SPIRV_MAGIC));
        assert!(s.push_bytes <= PUSH_WORDS * 4);
        let inv: u64 = s.workgroup.iter().map(|&w| u64::from(w)).product();
        assert!((1..=u64::from(LIMITS.max_invocations)).contains(&inv));
        for (w, m) in s.workgroup.iter().zip(LIMITS.max_size) {
            assert!((1..=m).contains(w));
        }
        for b in &s.bindings {
            assert!(
                b.group < MAX_GROUPS && b.binding < MAX_BINDING,
                "binding {b:?} out of range"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // `compile` contains naga's panics (`ShaderError::Panicked`); libFuzzer's
    // hook would abort on them even so. A panic that escapes still aborts
    // (libfuzzer-sys catches it and aborts). Panics raised in naga's code
    // are not printed (COPROC_FUZZ_TRACE=1 prints them too).
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let trace = std::env::var_os("COPROC_FUZZ_TRACE").is_some();
        std::panic::set_hook(Box::new(move |info| {
            let in_naga = info.location().is_some_and(|l| l.file().contains("/naga-"));
            if trace || !in_naga {
                eprintln!("{info}");
            }
        }));
    });
    if let Ok(specs) = compile(data, &LIMITS) {
        check(&specs);
        // naga's own output, fed back, is accepted: one entry point each.
        // Except where naga's SPIR-V reader cannot read back what its
        // writer made: atomics on workgroup memory come back as "the type
        // of [n] doesn't match the type stored" (the corpus's
        // specialized-histo). The driver takes that SPIR-V, and
        // coproc-vulkan's tests run such shaders against host references;
        // what is checked here then is only that reading it back fails
        // cleanly, as a refusal.
        for s in &specs {
            let bytes: Vec<u8> = s.spirv.iter().flat_map(|w| w.to_le_bytes()).collect();
            let Ok(again) = compile(&bytes, &LIMITS) else {
                continue;
            };
            assert_eq!(again.len(), 1);
            // The pipeline layout comes from the first reflection: it must
            // cover every binding the rewritten SPIR-V uses, writable where
            // that writes (naga's writer may drop a binding the original
            // module only used in dead code, so fewer is fine).
            for b in &again[0].bindings {
                let Some(o) = s
                    .bindings
                    .iter()
                    .find(|o| (o.group, o.binding, o.kind) == (b.group, b.binding, b.kind))
                else {
                    panic!("binding {} not in the reflection", b.binding);
                };
                assert!(o.writable || !b.writable, "binding {} writable", b.binding);
            }
            assert!(again[0].push_bytes <= s.push_bytes);
            assert_eq!(again[0].workgroup, s.workgroup);
        }
    }
});
