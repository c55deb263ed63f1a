"""Relative error of a 3x3 convolution (256 channels, random data, He-scaled filters) computed by
Winograd F(2x2,3x3) and F(4x4,3x3) with the transformed operands rounded to bfloat16 (float32
sums), against the exact result, beside the direct convolution with bfloat16 operands.

    python tools/bench/winograd_bf16_error.py
"""
import numpy as np
rng=np.random.default_rng(0)
def bf16(a):
    a=np.asarray(a,dtype=np.float32); b=a.view(np.uint32).astype(np.uint64)
    r=((b+0x7FFF+((b>>16)&1))>>16)<<16
    return r.astype(np.uint32).view(np.float32)
C=256; T=400  # channels, tiles
def run(Bt,G,At,m):
    n=m+2
    d=rng.standard_normal((T,C,n,n)).astype(np.float32)  # input patches
    g=(rng.standard_normal((C,3,3))*np.sqrt(2/(9*C))).astype(np.float32)
    # exact direct (float64): y[t,i,j]=sum_c sum_kl d[t,c,i+k,j+l] g[c,k,l]
    y=np.zeros((T,m,m))
    for k in range(3):
        for l in range(3):
            y+=np.einsum('tcij,c->tij',d[:,:,k:k+m,l:l+m].astype(np.float64),g[:,k,l].astype(np.float64))
    U=np.einsum('ak,ckl,bl->cab',G,g,G).astype(np.float32)
    V=np.einsum('ai,tcij,bj->tcab',Bt,d,Bt).astype(np.float32)
    M=np.einsum('cab,tcab->tab',bf16(U).astype(np.float64),bf16(V).astype(np.float64))
    Y=np.einsum('ia,tab,jb->tij',At,M,At)
    # direct with bf16 operands
    yd=np.zeros((T,m,m))
    for k in range(3):
        for l in range(3):
            yd+=np.einsum('tcij,c->tij',bf16(d[:,:,k:k+m,l:l+m]).astype(np.float64),bf16(g[:,k,l]).astype(np.float64))
    rel=lambda a: np.sqrt(((a-y)**2).mean()/(y**2).mean())
    return rel(Y), rel(yd)
Bt2=np.array([[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]],float)
G2=np.array([[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]])
At2=np.array([[1,1,1,0],[0,1,-1,-1]],float)
Bt4=np.array([[4,0,-5,0,1,0],[0,-4,-4,1,1,0],[0,4,-4,-1,1,0],[0,-2,-1,2,1,0],[0,2,-1,-2,1,0],[0,4,0,-5,0,1]],float)
G4=np.array([[1/4,0,0],[-1/6,-1/6,-1/6],[-1/6,1/6,-1/6],[1/24,1/12,1/6],[1/24,-1/12,1/6],[0,0,1]])
At4=np.array([[1,1,1,1,1,0],[0,1,-1,2,-2,0],[0,1,1,4,4,0],[0,1,-1,8,-8,1]],float)
for name,(Bt,G,At,m) in {'F(2,3)':(Bt2,G2,At2,2),'F(4,3)':(Bt4,G4,At4,4)}.items():
    w,dd=run(Bt,G,At,m); print(f'{name}: winograd bf16 rel err {w:.2e}, direct bf16 {dd:.2e}, ratio {w/dd:.1f}')
