(function(){
function each(s,f,r){Array.prototype.forEach.call((r||document).querySelectorAll(s),f);}
each('.explorer',function(ex){
 var s=ex.querySelector('input[type=range]'),o=ex.querySelector('output'),ps=ex.querySelectorAll('.layer');
 if(!s||!ps.length)return;
 function show(i){
  each('.layer',function(p,j){p.hidden=(j!==i);},ex);
  var p=ps[i];if(o)o.textContent=p.getAttribute('data-label');
  each('.cursor',function(c){c.setAttribute('x1',p.getAttribute('data-x'));c.setAttribute('x2',p.getAttribute('data-x'));},ex);
 }
 s.addEventListener('input',function(){show(+s.value);});show(+s.value);
});
each('table.sortable',function(t){
 each('th.sort',function(th,col){
  th.addEventListener('click',function(){
   var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),d=th.getAttribute('data-dir')==='a'?-1:1;
   th.setAttribute('data-dir',d>0?'a':'d');
   rows.sort(function(x,y){
    var a=x.cells[col].getAttribute('data-v'),c=y.cells[col].getAttribute('data-v');
    var fa=parseFloat(a),fc=parseFloat(c);
    if(!isNaN(fa)&&!isNaN(fc))return d*(fa-fc);
    return d*String(a).localeCompare(String(c));
   });
   rows.forEach(function(r){b.appendChild(r);});
  });
 },t);
});
})();
