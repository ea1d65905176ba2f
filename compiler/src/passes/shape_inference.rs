//! Infers every node's output type from its operands and checks that the ops make sense
//! (matching inner dimensions, head counts that divide, ...). Later passes rely on the types.

use crate::ir::{DType, Dim, Epilogue, Graph, NodeId, Op, PartialsInto, TensorType};

use super::PassError;

pub fn run(g: &mut Graph) -> Result<(), PassError> {
    let order = super::schedule::topological(g);
    for id in order {
        let ty = infer(g, id).map_err(|why| PassError::Shape {
            node: g.node(id).name.clone(),
            op: g.node(id).op.mnemonic(),
            why,
        })?;
        g.dag[id].ty = Some(ty);
    }
    Ok(())
}

fn fixed(dims: &[u64]) -> Vec<Dim> {
    dims.iter().map(|&d| Dim::Fixed(d)).collect()
}

fn infer(g: &Graph, id: NodeId) -> Result<TensorType, String> {
    let operands: Vec<&TensorType> = g
        .operands(id)
        .into_iter()
        .map(|o| g.node(o).ty.as_ref().expect("operands are inferred first"))
        .collect();
    let arity = |n: usize| -> Result<(), String> {
        if operands.len() == n {
            Ok(())
        } else {
            Err(format!("takes {n} operands, has {}", operands.len()))
        }
    };
    let activation = |t: &TensorType| -> Result<u64, String> {
        match (t.dtype, t.per_token_elements()) {
            (DType::F32, Some(n)) => Ok(n),
            _ => Err(format!("expects f32 activations [T, ...], got {t}")),
        }
    };
    let op = &g.node(id).op;
    Ok(match op {
        Op::TokenIds => TensorType::new(vec![Dim::Tokens], DType::I32),
        Op::Weight { ty, dims, .. } => {
            // Row-major shape: ggml's dims reversed.
            let shape = fixed(&dims.iter().rev().copied().collect::<Vec<_>>());
            TensorType::new(shape, DType::Ggml(*ty))
        }
        Op::Embed { .. } => {
            arity(2)?;
            let (table, ids) = (operands[0], operands[1]);
            let n = match (table.dtype, table.shape.as_slice()) {
                (DType::Ggml(_), [Dim::Fixed(_), Dim::Fixed(n)]) => *n,
                _ => return Err(format!("table must be a 2-D weight, got {table}")),
            };
            if ids.dtype != DType::I32 || ids.shape != [Dim::Tokens] {
                return Err(format!("ids must be i32[T], got {ids}"));
            }
            TensorType::new(vec![Dim::Tokens, Dim::Fixed(n)], DType::F32)
        }
        Op::RmsNorm { .. } => {
            arity(2)?;
            activation(operands[0])?;
            let n = match operands[0].shape.last() {
                Some(Dim::Fixed(n)) => *n,
                _ => return Err("x needs a fixed last dimension".into()),
            };
            if operands[1].fixed_elements() != Some(n) || operands[1].shape.len() != 1 {
                return Err(format!("weight must be [{n}], got {}", operands[1]));
            }
            operands[0].clone()
        }
        Op::MatMul => {
            arity(2)?;
            let k = activation(operands[0])?;
            if operands[0].shape.len() != 2 {
                return Err(format!("x must be [T, k], got {}", operands[0]));
            }
            match (operands[1].dtype, operands[1].shape.as_slice()) {
                (DType::Ggml(_), [Dim::Fixed(n), Dim::Fixed(wk)]) if *wk == k => {
                    TensorType::new(vec![Dim::Tokens, Dim::Fixed(*n)], DType::F32)
                }
                _ => return Err(format!("weight must be [n, {k}], got {}", operands[1])),
            }
        }
        Op::Add | Op::Mul => {
            arity(2)?;
            let n = activation(operands[0])?;
            let b = operands[1];
            let b_ok = if b.dtype == DType::F32 {
                b.per_token_elements() == Some(n)
            } else {
                matches!(b.dtype, DType::Ggml(llamart::GgmlType::F32))
                    && b.fixed_elements() == Some(n)
            };
            if !b_ok {
                return Err(format!("operands {} and {b} do not match", operands[0]));
            }
            operands[0].clone()
        }
        Op::AddScalar(_) | Op::Scale(_) | Op::Unary(_) => {
            arity(1)?;
            let t = operands[0];
            if t.dtype != DType::F32 && t.dtype != DType::Ggml(llamart::GgmlType::F32) {
                return Err(format!("expects f32 values, got {t}"));
            }
            t.clone()
        }
        Op::FormedInput => {
            arity(1)?;
            let producer = g.operands(id)[0];
            if !matches!(
                g.node(producer).op,
                Op::FusedMatMul {
                    post_norm: Some(_),
                    ..
                }
            ) {
                return Err("only a fused product with a post-norm forms an input".into());
            }
            let x = g.operands(producer)[0];
            g.node(x).ty.clone().expect("operands are inferred first")
        }
        Op::Reshape(dims) => {
            arity(1)?;
            let n = activation(operands[0])?;
            if dims.iter().product::<u64>() != n {
                return Err(format!("cannot reshape {} to [T, {dims:?}]", operands[0]));
            }
            let mut shape = vec![Dim::Tokens];
            shape.extend(fixed(dims));
            TensorType::new(shape, DType::F32)
        }
        Op::Rope { n_rot, .. } => {
            arity(1)?;
            activation(operands[0])?;
            match operands[0].shape.as_slice() {
                [Dim::Tokens, Dim::Fixed(_), Dim::Fixed(hd)]
                    if u64::from(*n_rot) <= *hd && n_rot % 2 == 0 => {}
                _ => {
                    return Err(format!(
                        "needs [T, heads, head_dim >= {n_rot}], got {}",
                        operands[0]
                    ))
                }
            }
            operands[0].clone()
        }
        Op::Attention { .. } => {
            let heads = |t: &TensorType| match t.shape.as_slice() {
                [Dim::Tokens, Dim::Fixed(h), Dim::Fixed(d)] if t.dtype == DType::F32 => {
                    Ok((*h, *d))
                }
                _ => Err(format!(
                    "q, k and v must be f32[T, heads, head_dim], got {t}"
                )),
            };
            let (hq, dq) = heads(operands[0])?;
            let (hk, dk) = if operands.len() == 1 {
                g.attention_kv_heads(id).ok_or(
                    "q alone must be a view of a fused product that stores k and v in the cache",
                )?
            } else {
                arity(3)?;
                let ((hk, dk), (hv, dv)) = (heads(operands[1])?, heads(operands[2])?);
                if (hk, dk) != (hv, dv) {
                    return Err(format!("k {} and v {} differ", operands[1], operands[2]));
                }
                (hk, dk)
            };
            if dq != dk || hk == 0 || hq % hk != 0 {
                return Err(format!(
                    "q {} with {hk} KV heads of {dk} is not grouped-query attention",
                    operands[0]
                ));
            }
            operands[0].clone()
        }
        Op::AttentionProject { .. } => {
            arity(2)?;
            let (h, hd) = match operands[0].shape.as_slice() {
                [Dim::Tokens, Dim::Fixed(h), Dim::Fixed(d)] if operands[0].dtype == DType::F32 => {
                    (*h, *d)
                }
                _ => {
                    return Err(format!(
                        "q must be f32[T, heads, head_dim], got {}",
                        operands[0]
                    ))
                }
            };
            let (hk, dk) = g
                .attention_kv_heads(id)
                .ok_or("q must be a view of a fused product that stores k and v in the cache")?;
            if dk != hd || hk == 0 || h % hk != 0 {
                return Err(format!(
                    "q {} with {hk} KV heads of {dk} is not grouped-query attention",
                    operands[0]
                ));
            }
            match (operands[1].dtype, operands[1].shape.as_slice()) {
                (DType::Ggml(_), [Dim::Fixed(n), Dim::Fixed(k)]) if *k == h * hd => {
                    TensorType::new(vec![Dim::Tokens, Dim::Fixed(h * n)], DType::F32)
                }
                _ => {
                    return Err(format!(
                        "the projection must be [n, {}], got {}",
                        h * hd,
                        operands[1]
                    ))
                }
            }
        }
        Op::FusedMatMul {
            weights,
            post_norm,
            norm,
            epilogue,
            partials,
        } => {
            let layout = llamart::plan::FusedInputs::new(
                *weights,
                post_norm.is_some(),
                norm.is_some(),
                epilogue,
                *partials,
            );
            if *weights == 0 || *weights as usize > llamart::plan::MAX_STACKED_WEIGHTS {
                return Err(format!("{weights} stacked weights"));
            }
            arity(layout.len)?;
            let k = activation(operands[0])?;
            if operands[0].shape.len() != 2 {
                return Err(format!("x must be [T, k], got {}", operands[0]));
            }
            let mut n = 0;
            for w in &operands[layout.weights.clone()] {
                n += match (w.dtype, w.shape.as_slice()) {
                    (DType::Ggml(_), [Dim::Fixed(n), Dim::Fixed(wk)]) if *wk == k => *n,
                    _ => return Err(format!("weights must be [n, {k}], got {w}")),
                };
            }
            let f32_weight = |t: &TensorType, len: u64, what: &str| {
                if t.dtype == DType::Ggml(llamart::GgmlType::F32)
                    && t.shape.len() == 1
                    && t.fixed_elements() == Some(len)
                {
                    Ok(())
                } else {
                    Err(format!("{what} must be f32[{len}], got {t}"))
                }
            };
            if let Some(i) = layout.post_y {
                if activation(operands[i])? != k || operands[i].shape.len() != 2 {
                    return Err(format!(
                        "the post-norm's y must be [T, {k}], got {}",
                        operands[i]
                    ));
                }
            }
            if let Some(i) = layout.post_weight {
                f32_weight(operands[i], k, "the post-norm weight")?;
            }
            if let Some(i) = layout.norm_weight {
                f32_weight(operands[i], k, "the norm weight")?;
            }
            if let Some(p) = partials {
                let len = match p.into {
                    PartialsInto::Input => k,
                    PartialsInto::Residual if *epilogue == Epilogue::Add => n,
                    PartialsInto::Residual => {
                        return Err("parts for a residual, without one".into())
                    }
                };
                let parts = operands[layout.parts.expect("with partials")];
                if activation(parts)? != u64::from(p.count) * len || parts.shape.len() != 2 {
                    return Err(format!("{} parts of {len} cannot be {parts}", p.count));
                }
            }
            let last = operands[layout.epilogue.unwrap_or(0)];
            let out = match *epilogue {
                Epilogue::Store => n,
                Epilogue::Add => {
                    if activation(last)? != n || last.shape.len() != 2 {
                        return Err(format!("the residual must be [T, {n}], got {last}"));
                    }
                    n
                }
                Epilogue::Glu(_) => {
                    if n % 2 != 0 {
                        return Err(format!("a GLU needs an even number of rows, got {n}"));
                    }
                    n / 2
                }
                Epilogue::RopeKv {
                    n_head,
                    n_kv_head,
                    head_dim,
                    n_rot,
                    bias,
                    ..
                } => {
                    let (h, hkv, hd) =
                        (u64::from(n_head), u64::from(n_kv_head), u64::from(head_dim));
                    if n != (h + 2 * hkv) * hd
                        || hkv == 0
                        || h % hkv != 0
                        || n_rot > head_dim
                        || n_rot % 2 != 0
                    {
                        return Err(format!(
                            "{n} rows do not make q, k and v of {n_head}/{n_kv_head} heads of {head_dim} (n_rot {n_rot})"
                        ));
                    }
                    if bias {
                        f32_weight(last, n, "the bias")?;
                    }
                    if let Some(i) = layout.qk_norm {
                        f32_weight(operands[i], hd, "the q head-norm weight")?;
                        f32_weight(operands[i + 1], hd, "the k head-norm weight")?;
                    }
                    h * hd
                }
            };
            TensorType::new(vec![Dim::Tokens, Dim::Fixed(out)], DType::F32)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::WeightData;
    use llamart::GgmlType;

    fn w(g: &mut Graph, dims: &[u64]) -> NodeId {
        g.add(
            "w",
            Op::Weight {
                data: WeightData::Computed(vec![]),
                ty: GgmlType::F32,
                dims: dims.to_vec(),
            },
            &[],
        )
    }

    #[test]
    fn infers_a_projection_chain() {
        let mut g = Graph::new();
        let ids = g.add("ids", Op::TokenIds, &[]);
        let table = w(&mut g, &[8, 100]);
        let x = g.add("x", Op::Embed { scale: 1.0 }, &[table, ids]);
        let wq = w(&mut g, &[8, 12]);
        let q = g.add("q", Op::MatMul, &[x, wq]);
        let q = g.add("qh", Op::Reshape(vec![3, 4]), &[q]);
        run(&mut g).unwrap();
        assert_eq!(g.ty(q).to_string(), "f32[T, 3, 4]");
        assert_eq!(g.ty(table).to_string(), "f32[100, 8]");
    }

    #[test]
    fn rejects_mismatched_inner_dimension_naming_the_node() {
        let mut g = Graph::new();
        let ids = g.add("ids", Op::TokenIds, &[]);
        let table = w(&mut g, &[8, 100]);
        let x = g.add("x", Op::Embed { scale: 1.0 }, &[table, ids]);
        let wq = w(&mut g, &[9, 12]);
        g.add("blk.0.attn_q", Op::MatMul, &[x, wq]);
        let err = run(&mut g).unwrap_err().to_string();
        assert!(
            err.contains("blk.0.attn_q") && err.contains("matmul") && err.contains("[n, 8]"),
            "{err}"
        );
    }

    #[test]
    fn rejects_heads_that_do_not_group() {
        let mut g = Graph::new();
        let ids = g.add("ids", Op::TokenIds, &[]);
        let table = w(&mut g, &[12, 100]);
        let x = g.add("x", Op::Embed { scale: 1.0 }, &[table, ids]);
        let q = g.add("q", Op::Reshape(vec![3, 4]), &[x]);
        let k = g.add("k", Op::Reshape(vec![2, 6]), &[x]);
        g.add(
            "attn",
            Op::Attention {
                layer: 0,
                scale: 1.0,
                window: None,
            },
            &[q, k, k],
        );
        assert!(run(&mut g)
            .unwrap_err()
            .to_string()
            .contains("grouped-query"));
    }
}
