//! Constant folding: an elementwise op whose operands are all weights is computed now, once, and
//! replaced by a weight holding the result (Gemma's `1 + w` norm weights, for example), so no
//! kernel ever recomputes it per token.

use llamart::GgmlType;

use crate::gguf::GgufFile;
use crate::ir::{DType, Graph, Op, WeightData};

use super::PassError;

/// Returns how many nodes were folded. Needs inferred types.
pub fn run(g: &mut Graph, file: &GgufFile) -> Result<usize, PassError> {
    let mut folded = 0;
    for id in super::schedule::topological(g) {
        let operands = g.operands(id);
        let foldable = matches!(
            g.node(id).op,
            Op::AddScalar(_) | Op::Scale(_) | Op::Add | Op::Mul
        ) && !operands.is_empty()
            && operands.iter().all(|&o| g.node(o).op.is_weight());
        if !foldable {
            continue;
        }
        let values: Vec<Vec<f32>> = operands
            .iter()
            .map(|&o| weight_values(g, o, file))
            .collect::<Result<_, _>>()?;
        let result: Vec<f32> = match g.node(id).op {
            Op::AddScalar(c) => values[0].iter().map(|x| x + c).collect(),
            Op::Scale(c) => values[0].iter().map(|x| x * c).collect(),
            Op::Add => values[0]
                .iter()
                .zip(&values[1])
                .map(|(a, b)| a + b)
                .collect(),
            Op::Mul => values[0]
                .iter()
                .zip(&values[1])
                .map(|(a, b)| a * b)
                .collect(),
            _ => unreachable!("checked foldable above"),
        };
        let Op::Weight { dims, .. } = &g.node(operands[0]).op else {
            unreachable!("operands are weights")
        };
        let dims = dims.clone();
        let name = format!("{}(folded)", g.node(id).name);
        let ty = g.node(id).ty.clone();
        let new = g.add(
            name,
            Op::Weight {
                data: WeightData::Computed(result),
                ty: GgmlType::F32,
                dims,
            },
            &[],
        );
        g.dag[new].ty = ty.map(|t| crate::ir::TensorType::new(t.shape, DType::Ggml(GgmlType::F32)));
        g.replace_uses(id, new);
        folded += 1;
    }
    Ok(folded)
}

fn weight_values(g: &Graph, id: crate::ir::NodeId, file: &GgufFile) -> Result<Vec<f32>, PassError> {
    let Op::Weight { data, ty, dims } = &g.node(id).op else {
        unreachable!("caller checked")
    };
    if let WeightData::Computed(v) = data {
        return Ok(v.clone());
    }
    let bytes = data.bytes(file).map_err(PassError::Fold)?;
    let n: u64 = dims.iter().product();
    let mut out = vec![0f32; n as usize];
    llamart::quant::dequantize(*ty, &bytes, &mut out)
        .map_err(|e| PassError::Fold(format!("weight '{}': {e}", g.node(id).name)))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;

    #[test]
    fn folds_weight_plus_one_into_a_new_weight() {
        let mut w = GgufWriter::new();
        w.tensor_f32("norm.weight", &[3], &[0.5, -1.0, 2.0]);
        let file = GgufFile::from_bytes(w.to_bytes()).unwrap();
        let mut g = Graph::new();
        let ids = g.add("ids", Op::TokenIds, &[]);
        let x = g.add("x", Op::Reshape(vec![1]), &[ids]);
        let norm = g.add(
            "norm",
            Op::Weight {
                data: WeightData::Gguf("norm.weight".into()),
                ty: GgmlType::F32,
                dims: vec![3],
            },
            &[],
        );
        let plus_one = g.add("norm_plus_one", Op::AddScalar(1.0), &[norm]);
        let y = g.add("y", Op::Mul, &[x, plus_one]);
        g.outputs.push(y);
        assert_eq!(run(&mut g, &file).unwrap(), 1);
        let new = g.operands(y)[1];
        assert_eq!(
            g.node(new).op,
            Op::Weight {
                data: WeightData::Computed(vec![1.5, 0.0, 3.0]),
                ty: GgmlType::F32,
                dims: vec![3]
            }
        );
        assert!(g.users(plus_one).is_empty());
    }
}
