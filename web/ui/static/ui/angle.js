// The viewer's Angle tool (key N): two rays from a vertex, placed with three clicks (the first
// ray's end, the vertex, the second ray's end) or a drag for the first ray and a click for the
// second. The shape is {type: "angle", points: [end, vertex, end]} in image pixels, so it turns
// and flips with the image like every annotation. The degrees shown while drawing are those
// web.clinical.review.measure.angle_degrees computes once saved: in physical space where the
// header gives the pixel size (each axis its own), on square pixels otherwise.
"use strict";
(function () {
  function degrees(shape, spacing) {
    const p = shape.points, sx = spacing ? spacing.col_mm : 1, sy = spacing ? spacing.row_mm : 1;
    const ux = (p[0][0] - p[1][0]) * sx, uy = (p[0][1] - p[1][1]) * sy;
    const wx = (p[2][0] - p[1][0]) * sx, wy = (p[2][1] - p[1][1]) * sy;
    if ((!ux && !uy) || (!wx && !wy)) return 0;
    return Math.atan2(Math.abs(ux * wy - uy * wx), ux * wx + uy * wy) * 180 / Math.PI;
  }
  function text(shape, spacing) { return degrees(shape, spacing).toFixed(1) + "°"; }

  // The two rays, a small arc between them at the vertex, and the degrees beside the vertex.
  // `label` is the viewer's upright text writer; `scale` its canvas pixels per image pixel.
  function draw(ctx, shape, scale, spacing, label) {
    const p = shape.points, v = p[1];
    ctx.beginPath();
    ctx.moveTo(p[0][0], p[0][1]); ctx.lineTo(v[0], v[1]); ctx.lineTo(p[2][0], p[2][1]);
    const a0 = Math.atan2(p[0][1] - v[1], p[0][0] - v[0]), a2 = Math.atan2(p[2][1] - v[1], p[2][0] - v[0]);
    let sweep = a2 - a0;
    while (sweep > Math.PI) sweep -= 2 * Math.PI;
    while (sweep < -Math.PI) sweep += 2 * Math.PI;
    const r = 18 / scale;
    ctx.moveTo(v[0] + r * Math.cos(a0), v[1] + r * Math.sin(a0));
    ctx.arc(v[0], v[1], r, a0, a0 + sweep, sweep < 0);
    ctx.stroke();
    if (p[1][0] !== p[2][0] || p[1][1] !== p[2][1]) label(text(shape, spacing), v[0], v[1], "bold 14", 10, -8, true);
  }

  // Drawing, as a small state machine over the viewer's pointer events. `placed`: how many
  // points are fixed; the rest follow the pointer.
  function start(ix, iy) { return {type: "angle", points: [[ix, iy], [ix, iy], [ix, iy]], placed: 1}; }
  function follow(draft, ix, iy) {
    for (let i = draft.placed; i < 3; i++) draft.points[i] = [ix, iy];
  }
  // A button released: `opened` when this press started the angle, `moved` when it dragged.
  // Returns the finished shape (to save) once the third point is placed, else null.
  function release(draft, ix, iy, opened, moved) {
    if (opened && !moved) return null;  // the first click: the first ray's end is placed
    follow(draft, ix, iy);
    draft.placed += 1;
    if (draft.placed < 3) return null;
    return {type: "angle", points: draft.points.map(function (q) { return [q[0], q[1]]; })};
  }

  window.radtriageAngle = {degrees: degrees, text: text, draw: draw, start: start, follow: follow, release: release};
})();
