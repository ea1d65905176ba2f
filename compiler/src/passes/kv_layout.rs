//! KV cache layout: for each attention layer, K and V regions back to back, each holding every
//! KV head's `kv_tokens` slots (the page pool's) in turn, a slot one row of `head_dim` values of
//! the chosen element type.

use llamart::plan::{KvLayer, KvLayout, KvType};

use crate::ir::{Graph, NodeId, Op};
use crate::passes::memory::BUFFER_ALIGN;
use crate::passes::PassError;

pub fn run(
    g: &Graph,
    schedule: &[NodeId],
    kv_tokens: u32,
    ty: KvType,
) -> Result<KvLayout, PassError> {
    let mut layers: Vec<(u32, KvLayer)> = Vec::new();
    let mut bytes = 0u64;
    for &id in schedule {
        let (Op::Attention { layer, .. } | Op::AttentionProject { layer, .. }) = g.node(id).op
        else {
            continue;
        };
        let (n_kv_head, head_dim) = g
            .attention_kv_heads(id)
            .expect("shape inference checked attention operands");
        ty.supports(head_dim as u32)
            .map_err(|why| PassError::Kv(format!("layer {layer}: {why}")))?;
        let row = ty.row_bytes(head_dim as usize) as u64;
        // Each KV head's slots back to back; regions stay aligned for GPU bindings.
        let region = (u64::from(kv_tokens) * n_kv_head * row).div_ceil(BUFFER_ALIGN) * BUFFER_ALIGN;
        layers.push((
            layer,
            KvLayer {
                k_offset: bytes,
                v_offset: bytes + region,
                n_kv_head: n_kv_head as u32,
                head_dim: head_dim as u32,
            },
        ));
        bytes += 2 * region;
    }
    layers.sort_by_key(|(l, _)| *l);
    for (i, (l, _)) in layers.iter().enumerate() {
        assert_eq!(
            *l as usize, i,
            "attention layers are numbered 0..n without gaps"
        );
    }
    Ok(KvLayout {
        bytes,
        ty,
        layers: layers.into_iter().map(|(_, l)| l).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;
    use crate::passes::{schedule, shape_inference};
    use crate::synthetic::TinyLlama;

    #[test]
    fn each_layer_gets_disjoint_k_and_v_regions_for_the_whole_context() {
        let model = TinyLlama {
            n_layer: 3,
            n_embd: 16,
            n_head: 4,
            n_head_kv: 2,
            ..TinyLlama::default()
        };
        let file = GgufFile::from_bytes(model.to_gguf()).unwrap();
        let (mut g, _) = crate::lower::lower(&file).unwrap();
        shape_inference::run(&mut g).unwrap();
        let layout = run(&g, &schedule::run(&g), 10, KvType::F32).unwrap();
        // Per layer and per tensor: 10 positions x 2 KV heads x 4 dims x 4 bytes = 320 bytes,
        // rounded up to 512 to keep every region 256-byte aligned.
        assert_eq!(layout.layers.len(), 3);
        assert_eq!(layout.bytes, 3 * 2 * 512);
        for (l, layer) in layout.layers.iter().enumerate() {
            assert_eq!((layer.n_kv_head, layer.head_dim), (2, 4));
            assert_eq!(layer.k_offset, l as u64 * 1024);
            assert_eq!(layer.v_offset, layer.k_offset + 512);
        }
        let half = run(&g, &schedule::run(&g), 10, KvType::F16).unwrap();
        assert_eq!(half.bytes, 3 * 2 * 256, "f16 rows are half as long");
        let err = run(&g, &schedule::run(&g), 10, KvType::Q8_0).unwrap_err();
        assert!(
            err.to_string().contains("multiple of 64"),
            "heads of 4 values cannot hold q8_0 blocks: {err}"
        );
    }
}
