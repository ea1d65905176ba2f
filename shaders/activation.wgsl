// The activation functions: 0 = SiLU, 1 = GELU (tanh approximation).
fn activation(v: f32, op: u32) -> f32 {
    if (op == 0u) {
        return v / (1.0 + exp(-v));
    }
    return 0.5 * v * (1.0 + tanh(0.7978846 * v * (1.0 + 0.044715 * v * v)));
}
