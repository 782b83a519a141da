import json, os, sys, torch
from jetspec.drafters.head import drafter as hd
from jetspec.core.proposal import DepthMarginals
if os.environ.get("HCAL") == "1":
    fitd = json.load(open("/work/main/bench/results/head_calibration_2026-12-04.json"))
    a, b = torch.tensor(fitd["slope"]), torch.tensor(fitd["bias"])
    orig = DepthMarginals.__init__
    def init(self, tokens, logps):
        d = logps.shape[0]
        aa, bb = a[:d].clamp_min(0.0), b[:d]
        if d > len(a):
            aa = torch.cat([a, a[-1:].expand(d - len(a))]); bb = torch.cat([b, b[-1:].expand(d - len(b))])
        lp = torch.nn.functional.logsigmoid(aa[:, None] * logps.float() + bb[:, None])
        orig(self, tokens, lp)
    DepthMarginals.__init__ = init
from jetspec.cli import main
sys.exit(main(sys.argv[1:]))
