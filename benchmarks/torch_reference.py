"""The same SDNet iteration in PyTorch eager mode, as a speed reference for train_step.py.

Benchmark-only: mirrors the architecture (same layers, widths, padding and activations as
``sdnet_tf.models``) and the five steps of one training iteration with four Adam optimisers,
so the seconds per iteration can be compared side by side with the TensorFlow engine. It is
not used by the package.

    python benchmarks/torch_reference.py --size 224 --iterations 3
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(cin, cout, act=True):
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class UNet(nn.Module):
    def __init__(self, filters=64, depth=4, channels=8):
        super().__init__()
        widths = [filters * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        cin = 1
        for w in widths:
            self.down.append(nn.Sequential(conv_bn(cin, w), conv_bn(w, w)))
            cin = w
        bottom = filters * 2 ** depth
        self.bottom = nn.Sequential(conv_bn(cin, bottom), conv_bn(bottom, bottom))
        self.up_conv = nn.ModuleList()
        self.up_block = nn.ModuleList()
        cin = bottom
        for w in reversed(widths):
            self.up_conv.append(conv_bn(cin, w, act=False))
            self.up_block.append(nn.Sequential(conv_bn(2 * w, w), conv_bn(w, w)))
            cin = w
        self.head = nn.Conv2d(cin, channels, 1)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for conv, block, skip in zip(self.up_conv, self.up_block, reversed(skips)):
            x = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
            x = block(torch.cat([x, skip], 1))
        s = torch.softmax(self.head(x), 1)
        return s + (torch.round(s) - s).detach()


class ModalityEncoder(nn.Module):
    def __init__(self, size=224, channels=8, nz=8):
        super().__init__()
        layers, cin, out = [], channels + 1, size
        for _ in range(4):
            layers += [nn.Conv2d(cin, 16, 3, stride=2), nn.BatchNorm2d(16, eps=1e-3, momentum=0.01),
                       nn.LeakyReLU(0.3)]
            cin, out = 16, (out - 3) // 2 + 1
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Linear(16 * out * out, 32), nn.BatchNorm1d(32, eps=1e-3, momentum=0.01),
                                   nn.LeakyReLU(0.3))
        self.mean = nn.Linear(32, nz)
        self.logvar = nn.Linear(32, nz)

    def forward(self, s, x):
        h = self.dense(self.convs(torch.cat([s, x], 1)).flatten(1))
        mean, logvar = self.mean(h), self.logvar(h)
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean), mean, logvar


class Decoder(nn.Module):
    def __init__(self, channels=8, nz=8, blocks=4):
        super().__init__()
        c = channels
        self.c = c
        self.conv1 = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1) for _ in range(blocks)])
        self.conv2 = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1) for _ in range(blocks)])
        self.film = nn.ModuleList([nn.Sequential(nn.Linear(nz, 2 * c), nn.LeakyReLU(0.3), nn.Linear(2 * c, 2 * c))
                                   for _ in range(blocks)])
        self.out = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, s, z):
        x = s
        for conv1, conv2, film in zip(self.conv1, self.conv2, self.film):
            p = film(z)
            gamma, beta = p[:, : self.c, None, None], p[:, self.c:, None, None]
            l1 = F.leaky_relu(conv1(x), 0.3)
            x = l1 + F.leaky_relu(conv2(l1) * gamma + beta, 0.3)
        return torch.tanh(self.out(x))


class Segmentor(nn.Module):
    def __init__(self, channels=8, classes=3, filters=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, filters, 3, padding=1), nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01),
            nn.LeakyReLU(0.3), nn.Conv2d(filters, filters, 3, padding=1),
            nn.BatchNorm2d(filters, eps=1e-3, momentum=0.01), nn.LeakyReLU(0.3), nn.Conv2d(filters, classes + 1, 1))
        self.classes = classes

    def forward(self, s):
        return torch.softmax(self.body(s), 1)[:, : self.classes]


class Discriminator(nn.Module):
    def __init__(self, size=224, classes=3, filters=64):
        super().__init__()
        self.first = nn.Conv2d(classes, filters, 4, stride=2, padding=1)
        self.convs = nn.ModuleList()
        cin = filters
        for i in range(4):
            stride = 1 if i == 3 else 2
            self.convs.append(nn.Conv2d(cin, filters * 2 ** (i + 1), 4, stride=stride,
                                        padding=1 if stride == 2 else "same"))
            cin = filters * 2 ** (i + 1)
        self.score = nn.Linear(cin * (size // 16) ** 2, 1)
        self.start = [torch.rand(c.weight[0].numel(), 1) * 2 - 1 for c in self.convs]

    def forward(self, m):
        x = F.leaky_relu(self.first(m), 0.2)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return self.score(x.flatten(1))

    def penalty(self):
        total = 0.0
        for conv, u in zip(self.convs, self.start):
            w = conv.weight.permute(2, 3, 1, 0).reshape(-1, conv.weight.shape[0])
            for _ in range(3):
                v = w.t() @ u
                v = v / v.norm()
                u = w @ v
                u = u / u.norm()
            sigma = (u.t() @ w @ v)[0, 0]
            total = total + 10.0 * (w / sigma).detach().sub(w).abs().mean()
        return total


def dice_loss(p, m):
    inter = (p * m).sum((1, 2, 3))
    return 1 - ((2 * inter + 0.1) / (p.sum((1, 2, 3)) + m.sum((1, 2, 3)) + 0.1)).mean()


def kl(mean, logvar):
    return (-0.5 * (1 + logvar - mean ** 2 - logvar.exp()).sum(1)).mean()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--filters", type=int, default=64, help="U-Net first-level filters")
    parser.add_argument("--depth", type=int, default=4, help="U-Net levels")
    parser.add_argument("--segmentor-filters", type=int, default=64)
    parser.add_argument("--discriminator-filters", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(1)
    size, b = args.size, args.batch
    unet, menc, dec = UNet(args.filters, args.depth), ModalityEncoder(size), Decoder()
    seg, disc = Segmentor(filters=args.segmentor_filters), Discriminator(size, filters=args.discriminator_filters)
    if args.channels_last:
        for net in (unet, menc, dec, seg, disc):
            net.to(memory_format=torch.channels_last)
    gens = list(unet.parameters()) + list(menc.parameters()) + list(dec.parameters()) + list(seg.parameters())
    adam = dict(lr=1e-4, betas=(0.5, 0.999), eps=1e-7)
    opt_sup, opt_unsup = torch.optim.Adam(gens, **adam), torch.optim.Adam(gens, **adam)
    opt_z = torch.optim.Adam(list(menc.parameters()) + list(dec.parameters()), **adam)
    opt_d = torch.optim.Adam(disc.parameters(), **adam)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    def batch(c=1):
        return torch.rand(b, c, size, size).mul(2).sub(1).contiguous(memory_format=fmt)

    def iteration():
        x, m = batch(), (torch.rand(b, 3, size, size) > 0.7).float().contiguous(memory_format=fmt)
        for net in (unet, menc, dec, seg):
            net.train()
        # supervised
        s = unet(x)
        z, mean, logvar = menc(s, x)
        loss = 10 * dice_loss(seg(s), m) + F.l1_loss(dec(s, z), x) + 0.01 * kl(mean, logvar)
        opt_sup.zero_grad()
        loss.backward()
        opt_sup.step()

        def zrec(images):
            unet.eval()
            with torch.no_grad():
                anatomy = unet(images)
            unet.train()
            prior = torch.randn(b, 8)
            zhat, _, _ = menc(anatomy, dec(anatomy, prior))
            opt_z.zero_grad()
            F.l1_loss(zhat, prior).backward()
            opt_z.step()

        zrec(x)
        u = batch()
        s = unet(u)
        z, mean, logvar = menc(s, u)
        loss = 10 * ((disc(seg(s)) - 1) ** 2).mean() + F.l1_loss(dec(s, z), u) + 0.01 * kl(mean, logvar)
        opt_unsup.zero_grad()
        loss.backward()
        opt_unsup.step()
        zrec(u)
        with torch.no_grad():
            unet.eval()
            seg.eval()
            fake = seg(unet(batch()))
        loss = ((disc(m) - 1) ** 2).mean() + (disc(fake) ** 2).mean() + disc.penalty()
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()

    start = time.perf_counter()
    for _ in range(args.warmup):
        iteration()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(args.iterations):
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(json.dumps({"framework": f"torch {torch.__version__}", "input_size": size, "channels_last": args.channels_last,
                      "threads": torch.get_num_threads(), "median_s_per_iteration": round(median, 4),
                      "images_per_s": round(2 * b / median, 3), "all_s": [round(t, 4) for t in times],
                      "warmup_s": round(warmup, 2)}))


if __name__ == "__main__":
    main()
