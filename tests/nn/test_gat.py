"""Graph attention: DAEGC's layer against its dense formula, the encoder's two conv options."""
import warnings

import pytest
import torch
from torch_geometric.utils import coalesce

from deepclust.data.graph import proximity_graph
from deepclust.nn.gat import GATEncoder, ProximityGATConv


def _graph(n=12, seed=4):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, 3 * n), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    return torch.randn(n, 8, generator=g), torch.cat([ei, ei.flip(0)], 1)


def _dense_attention(h, conv, weight, mask):
    """softmax_j over ``mask`` of LeakyReLU(M_ij (a_s.h_i + a_n.h_j)), times ``h``."""
    e = torch.nn.functional.leaky_relu(((h @ conv.att_self) + (h @ conv.att_neigh).t()) * weight, 0.2)
    return torch.softmax(e.masked_fill(~mask, float("-inf")), 1) @ h


def test_proximity_gat_conv_matches_dense_formula():
    x, ei = _graph()
    att_ei, w = proximity_graph(ei, 12)
    conv = ProximityGATConv(8, 5).double()
    out = conv(x.double(), att_ei, w.double())
    h = x.double() @ conv.lin.weight.t()
    m = torch.zeros(12, 12, dtype=torch.float64)
    m[att_ei[1], att_ei[0]] = w.double()  # the message j -> i carries M[i, j]
    torch.testing.assert_close(out, _dense_attention(h, conv, m, m != 0))
    # sparse (CSR) features give the same layer output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        xs = x.double().to_sparse_csr()
    torch.testing.assert_close(conv(xs, att_ei, w.double()), out)
    # without weights: plain GAT attention over the graph plus the added self-loops
    ei = coalesce(ei)  # no duplicate edges, as in the dense mask
    mask = torch.eye(12, dtype=torch.bool)
    mask[ei[1], ei[0]] = True
    torch.testing.assert_close(conv(x.double(), ei), _dense_attention(h, conv, 1.0, mask))


@pytest.mark.parametrize("conv", ["daegc", "pyg"])
def test_encoder_shapes_and_normalised_rows(conv):
    x, ei = _graph(n=30, seed=0)
    enc = GATEncoder(8, 16, 4, conv=conv)
    z = enc(x, ei)
    assert z.shape == (30, 4)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(30))
    raw = GATEncoder(8, 16, 4, conv=conv, normalize=False)
    raw.load_state_dict(enc.state_dict())
    torch.testing.assert_close(torch.nn.functional.normalize(raw(x, ei), dim=1), z)
    enc.reset_parameters()
    assert not torch.allclose(enc(x, ei), z)


def test_bad_conv():
    with pytest.raises(ValueError, match="conv"):
        GATEncoder(8, 16, 4, conv="gcn")
