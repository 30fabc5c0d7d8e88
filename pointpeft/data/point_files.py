"""Read point-cloud and mesh files: .npy, .xyz/.txt/.pts, .ply (ascii/binary, points or mesh), .pcd
(ascii/binary), .off; meshes become point clouds by sampling their surface uniformly by area. The viewer
(``tools/visualize.py``) reads any of them; ModelNet40's ``normal_resampled`` layout reads its ``.txt`` shapes with
the same :func:`read_text_points`.

The readers are plain numpy (no Open3D needed), so they work wherever the package does; only PCD's
``binary_compressed`` encoding is delegated to Open3D when it is installed. Every malformed file raises
:class:`~pointpeft.errors.DataError` naming the file and what was wrong.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pointpeft.errors import DataError, InputError
from pointpeft.utils.io import atomic_write

#: File suffixes :func:`read_cloud` understands.
CLOUD_SUFFIXES = (".npy", ".xyz", ".txt", ".pts", ".ply", ".pcd", ".off")


@dataclass
class CloudFile:
    """What a file holds: points (N, 3) float32, optional per-point colours (N, 3) in [0, 1], optional triangle
    faces (F, 3) int64 (a mesh; ``points`` are then its vertices)."""

    points: np.ndarray
    colors: np.ndarray | None = None
    faces: np.ndarray | None = None
    source: str = ""

    @property
    def is_mesh(self) -> bool:
        return self.faces is not None and len(self.faces) > 0


# -- mesh sampling ---------------------------------------------------------------------------------------------

def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area of every triangle (F,)."""
    v = np.asarray(vertices, dtype=np.float64)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def sample_mesh_surface(vertices: np.ndarray, faces: np.ndarray, num_points: int, seed: int = 0,
                        source: str = "mesh") -> np.ndarray:
    """``num_points`` points (float32) uniformly distributed over the mesh surface.

    A triangle is drawn with probability proportional to its area, then a point uniformly inside it with the
    square-root barycentric rule (u = 1 - sqrt(r1), v = sqrt(r1)(1 - r2), w = sqrt(r1) r2), so the density per unit
    area is the same everywhere. Deterministic for a given ``seed``.
    """
    if num_points < 1:
        raise InputError(f"{source}: num_points must be >= 1, got {num_points}")
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise DataError(f"{source}: expected triangle faces (F, 3), got shape {faces.shape}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise DataError(f"{source}: face index out of range (vertices: {len(vertices)}, "
                        f"indices {int(faces.min())}..{int(faces.max())})")
    areas = triangle_areas(vertices, faces)
    total = float(areas.sum())
    if not np.isfinite(total) or total <= 0:
        raise DataError(f"{source}: the mesh has zero (or non-finite) surface area; nothing to sample")
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(faces), size=num_points, p=areas / total)
    r1, r2 = rng.random(num_points), rng.random(num_points)
    s1 = np.sqrt(r1)
    u, v, w = 1.0 - s1, s1 * (1.0 - r2), s1 * r2
    a, b, c = (vertices[faces[tri, k]] for k in range(3))
    return (u[:, None] * a + v[:, None] * b + w[:, None] * c).astype(np.float32)


def fan_triangulate(polygons: list[list[int]], source: str = "mesh") -> np.ndarray:
    """Polygons (lists of vertex indices) -> triangles (F, 3) by fans around each polygon's first vertex."""
    tris: list[tuple[int, int, int]] = []
    for k, poly in enumerate(polygons):
        if len(poly) < 3:
            raise DataError(f"{source}: face {k} has {len(poly)} vertices (a face needs at least 3)")
        tris.extend((poly[0], poly[i], poly[i + 1]) for i in range(1, len(poly) - 1))
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


# -- OFF -------------------------------------------------------------------------------------------------------

def read_off(path: str | os.PathLike) -> CloudFile:
    """Object File Format mesh. Accepts ModelNet's known defect of the counts glued to the header (``OFF490 ...``),
    ``#`` comments, polygon faces (fan-triangulated) and trailing per-face colour values."""
    src = str(path)
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = [ln.split("#", 1)[0].strip() for ln in fh]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].upper().startswith("OFF"):
        raise DataError(f"{src}: not an OFF file (first line {lines[0][:40] if lines else '<empty>'!r}, "
                        "expected 'OFF')")
    head = lines[0][3:].strip()
    body = lines[1:]
    if not head:
        if not body:
            raise DataError(f"{src}: OFF header has no vertex/face counts")
        head, body = body[0], body[1:]
    try:
        nv, nf = (int(t) for t in head.split()[:2])
    except ValueError:
        raise DataError(f"{src}: bad OFF counts line {head!r} (expected 'num_vertices num_faces num_edges')") from None
    if len(body) < nv + nf:
        raise DataError(f"{src}: truncated: header promises {nv} vertices and {nf} faces, "
                        f"file has {len(body)} data lines")
    try:
        verts = np.array([ln.split()[:3] for ln in body[:nv]], dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{src}: bad vertex line ({e})") from None
    if verts.shape != (nv, 3):
        raise DataError(f"{src}: every vertex line needs 3 coordinates")
    polys: list[list[int]] = []
    for k, ln in enumerate(body[nv : nv + nf]):
        tok = ln.split()
        try:
            n = int(tok[0])
            poly = [int(t) for t in tok[1 : 1 + n]]
        except (ValueError, IndexError):
            raise DataError(f"{src}: bad face line {k}: {ln[:60]!r}") from None
        if len(poly) != n:
            raise DataError(f"{src}: face {k} announces {n} vertices but lists {len(poly)}")
        polys.append(poly)
    faces = fan_triangulate(polys, src)
    _check_finite(verts, src)
    if len(faces) and (faces.min() < 0 or faces.max() >= nv):
        raise DataError(f"{src}: face index out of range 0..{nv - 1}")
    return CloudFile(verts.astype(np.float32), None, faces, src)


# -- PLY -------------------------------------------------------------------------------------------------------

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2", "ushort": "u2",
    "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}


@dataclass
class _PlyElement:
    name: str
    count: int
    props: list[tuple[str, str, str | None]]  # (name, value type, list count type or None)


def _ply_header(fh, src: str) -> tuple[str, list[_PlyElement]]:  # noqa: ANN001
    if fh.readline().strip() != b"ply":
        raise DataError(f"{src}: not a PLY file (missing 'ply' magic line)")
    fmt, elements = None, []
    while True:
        raw = fh.readline()
        if not raw:
            raise DataError(f"{src}: PLY header has no 'end_header'")
        tok = raw.decode("ascii", errors="replace").split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "end_header":
            break
        if tok[0] == "format":
            fmt = tok[1]
        elif tok[0] == "element":
            elements.append(_PlyElement(tok[1], int(tok[2]), []))
        elif tok[0] == "property":
            if not elements:
                raise DataError(f"{src}: PLY property before any element")
            try:
                if tok[1] == "list":
                    elements[-1].props.append((tok[4], _PLY_TYPES[tok[3]], _PLY_TYPES[tok[2]]))
                else:
                    elements[-1].props.append((tok[2], _PLY_TYPES[tok[1]], None))
            except (KeyError, IndexError):
                raise DataError(f"{src}: unsupported PLY property line {' '.join(tok)!r}") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise DataError(f"{src}: unsupported PLY format {fmt!r}")
    return fmt, elements


def _ply_read_binary(fh, el: _PlyElement, endian: str, src: str) -> dict[str, np.ndarray]:  # noqa: ANN001
    if all(lt is None for _, _, lt in el.props):
        dt = np.dtype([(n, endian + t) for n, t, _ in el.props])
        buf = fh.read(dt.itemsize * el.count)
        if len(buf) < dt.itemsize * el.count:
            raise DataError(f"{src}: truncated PLY element {el.name!r} ({el.count} rows announced)")
        arr = np.frombuffer(buf, dtype=dt)
        return {n: arr[n] for n in arr.dtype.names}
    out: dict[str, list] = {n: [] for n, _, _ in el.props}
    for _ in range(el.count):
        for n, t, lt in el.props:
            if lt is None:
                size = np.dtype(t).itemsize
                out[n].append(np.frombuffer(_read_exact(fh, size, src), endian + t)[0])
            else:
                cnt = int(np.frombuffer(_read_exact(fh, np.dtype(lt).itemsize, src), endian + lt)[0])
                size = np.dtype(t).itemsize * cnt
                out[n].append(np.frombuffer(_read_exact(fh, size, src), endian + t).tolist())
    return {n: (np.asarray(v) if _ply_is_scalar(el, n) else v) for n, v in out.items()}


def _ply_is_scalar(el: _PlyElement, name: str) -> bool:
    return next(lt for n, _, lt in el.props if n == name) is None


def _read_exact(fh, size: int, src: str) -> bytes:  # noqa: ANN001
    buf = fh.read(size)
    if len(buf) < size:
        raise DataError(f"{src}: truncated PLY body")
    return buf


def _ply_read_ascii(lines: list[str], el: _PlyElement, src: str) -> dict[str, np.ndarray]:
    out: dict[str, list] = {n: [] for n, _, _ in el.props}
    if len(lines) < el.count:
        raise DataError(f"{src}: truncated PLY element {el.name!r}: {el.count} rows announced, {len(lines)} found")
    for row, ln in enumerate(lines[: el.count]):
        tok, pos = ln.split(), 0
        try:
            for n, _, lt in el.props:
                if lt is None:
                    out[n].append(float(tok[pos]))
                    pos += 1
                else:
                    cnt = int(tok[pos])
                    out[n].append([int(float(t)) for t in tok[pos + 1 : pos + 1 + cnt]])
                    pos += 1 + cnt
        except (ValueError, IndexError):
            raise DataError(f"{src}: bad PLY {el.name} row {row}: {ln[:60]!r}") from None
    return {n: (np.asarray(v) if _ply_is_scalar(el, n) else v) for n, v in out.items()}


def read_ply(path: str | os.PathLike) -> CloudFile:
    """PLY point cloud or mesh (ascii, binary little/big endian): x, y, z, optional red/green/blue, optional faces
    (``vertex_indices`` or ``vertex_index``, polygons fan-triangulated)."""
    src = str(path)
    with open(path, "rb") as fh:
        fmt, elements = _ply_header(fh, src)
        data: dict[str, dict[str, np.ndarray]] = {}
        if fmt == "ascii":
            lines = [ln for ln in fh.read().decode("ascii", errors="replace").splitlines() if ln.strip()]
            pos = 0
            for el in elements:
                data[el.name] = _ply_read_ascii(lines[pos:], el, src)
                pos += el.count
        else:
            endian = "<" if fmt == "binary_little_endian" else ">"
            for el in elements:
                data[el.name] = _ply_read_binary(fh, el, endian, src)
    vert = data.get("vertex")
    if vert is None or not all(k in vert for k in ("x", "y", "z")):
        raise DataError(f"{src}: PLY has no vertex element with x, y, z properties")
    pts = np.stack([np.asarray(vert[k], dtype=np.float64) for k in ("x", "y", "z")], axis=1)
    _check_finite(pts, src)
    colors = None
    if all(k in vert for k in ("red", "green", "blue")):
        c = np.stack([np.asarray(vert[k], dtype=np.float64) for k in ("red", "green", "blue")], axis=1)
        colors = c / 255.0 if c.max(initial=0) > 1.0 else c
    faces = None
    face_el = data.get("face")
    if face_el:
        key = next((k for k in ("vertex_indices", "vertex_index") if k in face_el), None)
        if key is not None:
            faces = fan_triangulate([list(map(int, f)) for f in face_el[key]], src)
            if len(faces) and (faces.min() < 0 or faces.max() >= len(pts)):
                raise DataError(f"{src}: face index out of range 0..{len(pts) - 1}")
    return CloudFile(pts.astype(np.float32), colors, faces, src)


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Binary little-endian PLY of a (coloured) point cloud, written atomically; opens in MeshLab/CloudCompare."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(pts)}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        colors = np.asarray(colors, dtype=np.float64).reshape(-1, 3)
        if len(colors) != len(pts):
            raise InputError(f"{path}: {len(colors)} colours for {len(pts)} points")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    arr = np.empty(len(pts), dtype=fields)
    arr["x"], arr["y"], arr["z"] = pts.T
    if colors is not None:
        rgb = np.clip(np.round(colors * 255.0), 0, 255).astype(np.uint8)
        arr["red"], arr["green"], arr["blue"] = rgb.T
    blob = ("\n".join(header + ["end_header"]) + "\n").encode("ascii") + arr.tobytes()

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(blob)

    return atomic_write(path, _w)


# -- PCD -------------------------------------------------------------------------------------------------------

def read_pcd(path: str | os.PathLike) -> CloudFile:
    """Point Cloud Library PCD (ascii or binary; binary_compressed through Open3D when installed)."""
    src = str(path)
    header: dict[str, list[str]] = {}
    with open(path, "rb") as fh:
        while True:
            raw = fh.readline()
            if not raw:
                raise DataError(f"{src}: PCD header has no DATA line")
            tok = raw.decode("ascii", errors="replace").split()
            if not tok or tok[0].startswith("#"):
                continue
            header[tok[0].upper()] = tok[1:]
            if tok[0].upper() == "DATA":
                break
        body = fh.read()
    try:
        fields = header["FIELDS"]
        n = int(header.get("POINTS", [0])[0]) or int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0])
        kind = header["DATA"][0].lower()
    except (KeyError, IndexError, ValueError):
        raise DataError(f"{src}: PCD header needs FIELDS, POINTS (or WIDTH/HEIGHT) and DATA") from None
    if not all(f in fields for f in ("x", "y", "z")):
        raise DataError(f"{src}: PCD has no x, y, z fields (fields: {fields})")
    sizes = [int(s) for s in header.get("SIZE", ["4"] * len(fields))]
    types = header.get("TYPE", ["F"] * len(fields))
    counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
    if kind == "binary_compressed":
        return _read_with_open3d(path, "PCD binary_compressed")
    cols: dict[str, np.ndarray] = {}
    if kind == "ascii":
        try:
            table = np.loadtxt(body.decode("ascii", errors="replace").splitlines(), dtype=np.float64, ndmin=2)
        except ValueError as e:
            raise DataError(f"{src}: bad PCD ascii data ({e})") from None
        if table.shape[0] < n or table.shape[1] < sum(counts):
            raise DataError(f"{src}: PCD ascii data has shape {table.shape}, header promises {n} x {sum(counts)}")
        col = 0
        for f, c, t, s in zip(fields, counts, types, sizes):
            values = table[:n, col]
            if f == "rgb" and t.upper() == "F" and s == 4:
                values = values.astype(np.float32).view(np.uint32).astype(np.float64)
            cols[f] = values
            col += c
    elif kind == "binary":
        code = {"F": "f", "I": "i", "U": "u"}
        try:
            dt = np.dtype([(f, f"<{code[t.upper()]}{s}", () if c == 1 else (c,))
                           for f, c, t, s in zip(fields, counts, types, sizes)])
        except KeyError:
            raise DataError(f"{src}: unsupported PCD TYPE in {types}") from None
        if len(body) < dt.itemsize * n:
            raise DataError(f"{src}: truncated PCD binary data ({len(body)} bytes for {n} points)")
        arr = np.frombuffer(body[: dt.itemsize * n], dtype=dt)
        for f in fields:
            v = arr[f]
            if f == "rgb" and v.dtype == np.float32:
                v = v.view(np.uint32)
            cols[f] = np.asarray(v, dtype=np.float64)
    else:
        raise DataError(f"{src}: unsupported PCD DATA encoding {kind!r}")
    pts = np.stack([cols["x"], cols["y"], cols["z"]], axis=1)
    _check_finite(pts, src)
    colors = None
    packed = cols.get("rgb", cols.get("rgba"))
    if packed is not None:
        u = packed.astype(np.uint32)
        colors = np.stack([(u >> 16) & 255, (u >> 8) & 255, u & 255], axis=1) / 255.0
    return CloudFile(pts.astype(np.float32), colors, None, src)


def _read_with_open3d(path: str | os.PathLike, what: str) -> CloudFile:
    try:
        import open3d as o3d
    except ImportError:
        raise DataError(f"{path}: {what} needs Open3D (pip install open3d), or convert the file to PLY") from None
    pc = o3d.io.read_point_cloud(str(path))
    pts = np.asarray(pc.points, dtype=np.float32)
    if len(pts) == 0:
        raise DataError(f"{path}: Open3D read no points from this {what} file")
    colors = np.asarray(pc.colors, dtype=np.float64) if pc.has_colors() else None
    return CloudFile(pts, colors, None, str(path))


# -- npy / xyz -------------------------------------------------------------------------------------------------

def read_npy(path: str | os.PathLike) -> CloudFile:
    """A (N, C>=3) or (1, N, C) array; columns 0..2 are x, y, z (extra columns, e.g. normals, are ignored)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise DataError(f"{path}: not a plain numpy array file ({e})") from None
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise DataError(f"{path}: expected an array (N, 3+) of points, got shape {arr.shape}")
    pts = np.asarray(arr[:, :3], dtype=np.float64)
    _check_finite(pts, str(path))
    return CloudFile(pts.astype(np.float32), None, None, str(path))


def read_text_points(path: str | os.PathLike, min_channels: int = 3) -> np.ndarray:
    """A text file of one point a line -> (N, C) float32: numbers separated by commas (ModelNet's ``x,y,z,nx,ny,nz``)
    or by spaces, ``#`` comments skipped; numpy's C parser (~4 ms for 10k lines)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = next((ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#")), "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
            arr = np.loadtxt(path, delimiter="," if "," in first else None, comments="#", dtype=np.float32, ndmin=2)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    except ValueError as e:
        raise DataError(f"{path}: not a file of point rows (x,y,z[,...] separated by commas or spaces): {e}") from None
    if arr.shape[0] == 0:
        raise DataError(f"{path}: empty point file")
    if arr.shape[1] < min_channels:
        raise DataError(f"{path}: rows have {arr.shape[1]} values, expected at least {min_channels}")
    return arr


def read_xyz(path: str | os.PathLike) -> CloudFile:
    """Comma- or whitespace-separated text, one point a line (x y z [...]); ModelNet's .txt files included."""
    pts = read_text_points(path)[:, :3]
    _check_finite(pts, str(path))
    return CloudFile(np.ascontiguousarray(pts), None, None, str(path))


def _check_finite(pts: np.ndarray, src: str) -> None:
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise DataError(f"{src}: NaN or inf at point {int(np.argmax(bad))} ({int(bad.sum())} bad points)")


_READERS = {".npy": read_npy, ".xyz": read_xyz, ".txt": read_xyz, ".pts": read_xyz, ".ply": read_ply,
            ".pcd": read_pcd, ".off": read_off}


def read_cloud(path: str | os.PathLike) -> CloudFile:
    """Read any supported file by its suffix (see :data:`CLOUD_SUFFIXES`)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    reader = _READERS.get(p.suffix.lower())
    if reader is None:
        raise DataError(f"{p}: unsupported file type {p.suffix!r}; supported: {', '.join(CLOUD_SUFFIXES)}")
    out = reader(p)
    if len(out.points) == 0:
        raise DataError(f"{p}: the file holds no points")
    return out


def load_points(path: str | os.PathLike, num_points: int | None = None, seed: int = 0,
                normalize: bool = False, mesh_points: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(points (N, 3) float32, colours or None) from a cloud or mesh file.

    Meshes are sampled on their surface uniformly by area (``num_points``, else ``mesh_points``, else 8192; the
    file's colours do not apply). Point files keep all their points unless ``num_points`` is given, then farthest point sampling picks
    that many (an error if the file has fewer). ``normalize`` centres and scales to the unit sphere, as models expect.
    """
    from pointpeft.data.base import fps_indices, pc_normalize

    f = read_cloud(path)
    colors = f.colors
    if f.is_mesh:
        pts = sample_mesh_surface(f.points, f.faces, num_points or mesh_points or 8192, seed=seed, source=f.source)
        colors = None
    else:
        pts = f.points
        if num_points is not None and num_points != len(pts):
            if num_points > len(pts):
                raise DataError(f"{f.source}: has {len(pts)} points, {num_points} requested (no upsampling)")
            idx = fps_indices(pts[None], num_points)[0]
            pts = pts[idx]
            colors = colors[idx] if colors is not None else None
    if normalize:
        pts = pc_normalize(pts)
    return np.ascontiguousarray(pts, dtype=np.float32), colors
